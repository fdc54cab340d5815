"""`fusion-runner demo`, as README's first command runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(150)
def test_demo_runs_to_the_end_and_prints_the_outcomes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    result = subprocess.run(
        [sys.executable, "-m", "fusion_runner", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = result.stdout.split("outcomes:")[1]
    assert len(re.findall(r"light-load\s+COMPLETED", outcomes)) == 1
    assert len(re.findall(r"heavy-load\s+COMPLETED", outcomes)) == 1
    assert len(re.findall(r"to-cancel\s+CANCELLED", outcomes)) == 1
    blocking = re.findall(r"(\d+) Erlang\s+(0\.\d{4})\s+\[", outcomes)
    assert [erlang for erlang, _ in blocking] == ["200", "300", "400", "500", "600", "700"]
    means = [float(mean) for _, mean in blocking]
    assert means == sorted(means)  # more load, more blocking
    daemon_log = (tmp_path / "demo" / "daemon.log").read_text()
    assert "action=exit" in daemon_log
