"""The shipped unit file: valid, hardened enough, and keeping runs across restarts."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_runner.core import config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "fusion-runner.service"
EXAMPLE = ROOT / "systemd" / "config.toml.example"
ANALYZE = shutil.which("systemd-analyze") or ""
needs_analyze = pytest.mark.skipif(not ANALYZE, reason="systemd-analyze is not installed")


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's console script."""
    script = Path(sys.executable).with_name("fusion-runner")
    text = UNIT.read_text().replace("/opt/fusion-runner/.venv/bin/fusion-runner", str(script))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run([ANALYZE, "verify", str(installed_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@needs_analyze
def test_exposure_score_is_at_most_2_5(tmp_path: Path) -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(installed_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5


def test_unit_keeps_simulations_on_restart_and_talks_to_systemd() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "process"
    assert service["Restart"] == "on-failure"
    # A configuration the daemon refuses is not retried in a loop.
    assert service["RestartPreventExitStatus"] == "2"
    # A restarted daemon must see the simulations the previous start left.
    assert "PrivateUsers" not in service
    assert "WatchdogSec" in service and "TimeoutStopSec" in service
    assert service["StateDirectory"] == "fusion-runner"
    assert service["ExecStart"].endswith("daemon --config /etc/fusion-runner/config.toml")


def test_example_config_is_valid() -> None:
    loaded = config.load({}, {}, EXAMPLE)
    assert loaded.database_url == "sqlite:////var/lib/fusion-runner/runs.db"
    assert loaded.on_shutdown == "detach"
