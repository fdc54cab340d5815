"""The client commands, run as a user runs them: `python -m fusion_runner ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Client, Daemon

INI = """\
[general_settings]
erlang_start = 300
holding_time = 0.2
thread_num = s1
thread_erlangs = False
spectrum_priority = None
request_distribution = {"25": 0.10, "50": 0.10, "100": 0.50, "200": 0.20, "400": 0.10}
alpha_start = 0.000215
[sim]
stdout = hello
"""


def cli(database: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    env["FUSION_RUNNER_DATABASE_URL"] = f"sqlite:///{database}"
    return subprocess.run(
        [sys.executable, "-m", "fusion_runner", *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=30,
    )


@pytest.fixture
def ini_file(tmp_path: Path) -> Path:
    path = tmp_path / "minimal.ini"
    path.write_text(INI)
    return path


def test_submit_inserts_a_pending_run_that_the_daemon_completes(
    daemon: Daemon, client: Client, ini_file: Path
) -> None:
    result = cli(daemon.database, "submit", str(ini_file), "--name", "sweep")

    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    row = client.wait_final(run_id)
    assert row["status"] == "COMPLETED"
    assert row["name"] == "sweep" and row["template"] == "minimal.ini"
    config = json.loads(row["config_json"])
    assert config["general_settings"]["erlang_start"] == 300
    assert config["general_settings"]["thread_erlangs"] is False
    assert config["general_settings"]["spectrum_priority"] is None
    assert config["general_settings"]["thread_num"] == "s1"
    # Values that would not render back identically stay text.
    assert config["general_settings"]["request_distribution"].startswith('{"25": 0.10')
    written = (daemon.run_dir(run_id) / "config.ini").read_text()
    for line in INI.splitlines()[1:]:
        if not line.startswith("["):
            assert line in written


def test_submit_of_a_missing_or_bad_file_exits_2(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    missing = cli(database, "submit", str(tmp_path / "nope.ini"))
    bad = tmp_path / "bad.ini"
    bad.write_text("no section header\n")
    malformed = cli(database, "submit", str(bad))

    assert missing.returncode == 2 and "nope.ini" in missing.stderr
    assert malformed.returncode == 2 and "bad.ini" in malformed.stderr
    assert "Traceback" not in missing.stderr + malformed.stderr


def test_ls_and_show(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {}}, name="my sweep")
    client.wait_final(run_id)

    listing = cli(daemon.database, "ls")
    shown = cli(daemon.database, "show", run_id)

    assert listing.returncode == 0
    assert run_id in listing.stdout and "COMPLETED" in listing.stdout
    assert "my sweep" in listing.stdout
    assert shown.returncode == 0
    assert f"id                {run_id}" in shown.stdout
    assert "status            COMPLETED" in shown.stdout


def test_show_of_an_unknown_id_exits_1(tmp_path: Path) -> None:
    result = cli(tmp_path / "runs.db", "show", "0123456789ab")

    assert result.returncode == 1
    assert "0123456789ab" in result.stderr


def test_cancel_running_pending_final_and_unknown(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = Client(daemon.database)
    running = client.submit({"sim": {"sleep": "forever"}})
    client.wait_status(running, "RUNNING")
    pending = client.submit({"sim": {}})

    result = cli(daemon.database, "cancel", running, pending)
    assert result.returncode == 0, result.stderr
    assert f"{running}: RUNNING -> CANCELLED" in result.stdout
    assert f"{pending}: PENDING -> CANCELLED" in result.stdout
    assert client.wait_final(running)["status"] == "CANCELLED"
    assert client.wait_final(pending)["status"] == "CANCELLED"

    again = cli(daemon.database, "cancel", running)
    assert again.returncode == 0
    assert "already CANCELLED" in again.stdout

    unknown = cli(daemon.database, "cancel", "ffffffffffff")
    assert unknown.returncode == 1
    assert "ffffffffffff" in unknown.stderr


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert cli(tmp_path / "runs.db", "frobnicate").returncode == 2
    assert cli(tmp_path / "runs.db", "ls", "--max-concurrent-runs", "0").returncode == 2
