"""A run from PENDING to its outcome, through a real daemon process, on SQLite and PostgreSQL."""

from __future__ import annotations

import configparser
import json
import os
import stat

import pytest

from tests.conftest import Client, Daemon

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite, then PostgreSQL

CONFIG = {
    "general_settings": {
        "erlang_start": 300, "holding_time": 0.2, "thread_erlangs": False,
        "spectrum_priority": None, "thread_num": "s1",
        "request_distribution": {"25": 0.1, "50": 0.9},
    },
    "sim": {"stdout": "to stdout", "stderr": "to stderr"},
}


def test_run_completes_with_every_field_a_user_reads(daemon: Daemon, client: Client) -> None:
    run_id = client.submit(CONFIG)

    row = client.wait_final(run_id)

    assert row["status"] == "COMPLETED"
    assert row["error_message"] is None
    assert row["pid"] is not None and row["pgid"] == row["pid"]
    assert row["pgid"] != os.getpgid(daemon.process.pid)  # type: ignore[union-attr]
    assert row["started_at"] is not None
    assert row["created_at"] <= row["started_at"] <= row["completed_at"]


def test_config_ini_matches_config_json(daemon: Daemon, client: Client) -> None:
    run_id = client.submit(CONFIG)
    client.wait_final(run_id)

    ini = configparser.ConfigParser(interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read(daemon.run_dir(run_id) / "config.ini")
    general = ini["general_settings"]
    assert general["erlang_start"] == "300"
    assert general["holding_time"] == "0.2"
    assert general["thread_erlangs"] == "False"
    assert general["spectrum_priority"] == "None"
    assert general["thread_num"] == "s1"
    assert json.loads(general["request_distribution"]) == {"25": 0.1, "50": 0.9}


def test_run_directory_layout_and_log(daemon: Daemon, client: Client) -> None:
    run_id = client.submit(CONFIG)
    client.wait_final(run_id)

    run_dir = daemon.run_dir(run_id)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o750
    assert (run_dir / "output").is_dir()
    log = (run_dir / "logs" / "sim.log").read_text()
    assert "to stdout" in log and "to stderr" in log


def test_simulation_sees_the_spec_environment_and_working_directory(
    daemon: Daemon, client: Client
) -> None:
    run_id = client.submit(CONFIG)
    client.wait_final(run_id)

    run_dir = daemon.run_dir(run_id).resolve()
    seen = json.loads((run_dir / "output" / "seen.json").read_text())
    assert seen["cwd"] == str(run_dir)
    assert seen["env"]["FUSION_RUN_ID"] == run_id
    assert seen["env"]["FUSION_RUN_DIR"] == str(run_dir)
    assert seen["env"]["FUSION_CONFIG_FILE"] == str(run_dir / "config.ini")
    assert seen["env"]["FUSION_PROGRESS_FILE"] == str(run_dir / "progress.jsonl")
    assert seen["env"]["FUSION_OUTPUT_DIR"] == str(run_dir / "output")


def test_command_template_placeholders_are_expanded(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import SIM

    daemon = daemon_factory(sim_command=f"{{python}} {SIM} --run={{run_id}} {{config}} x{{log}}")
    daemon.start()
    client = daemon.client()
    run_id = client.submit(CONFIG)
    client.wait_final(run_id)

    run_dir = daemon.run_dir(run_id).resolve()
    seen = json.loads((run_dir / "output" / "seen.json").read_text())
    assert seen["argv"] == [
        f"--run={run_id}", str(run_dir / "config.ini"), f"x{run_dir / 'logs' / 'sim.log'}"
    ]


def test_existing_config_ini_is_kept(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    run_id = "0123456789ab"
    run_dir = daemon.runs_dir / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.ini").write_text("[sim]\nstdout = from the kept file\n")
    daemon.start()
    client = daemon.client()
    client.submit({"sim": {"stdout": "from config_json"}}, run_id=run_id)

    client.wait_final(run_id)

    assert "from the kept file" in (run_dir / "logs" / "sim.log").read_text()


def test_failed_runs_say_why(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    # SPEC §6's failures, each written by the same path on either database.
    daemon = daemon_factory(max_concurrent_runs="2").start()
    client = daemon.client()
    exited = client.submit({"sim": {"stderr": "ValueError: no route to node 7", "exit": 3}})
    killed = client.submit({"sim": {"signal": "SIGKILL"}})

    row = client.wait_final(exited)
    assert row["status"] == "FAILED"
    assert row["error_message"].startswith("exit code 3")
    assert "ValueError: no route to node 7" in row["error_message"]
    assert row["created_at"] <= row["started_at"] <= row["completed_at"]
    row = client.wait_final(killed)
    assert row["status"] == "FAILED"
    assert "SIGKILL" in row["error_message"]
    assert daemon.process is not None and daemon.process.poll() is None
