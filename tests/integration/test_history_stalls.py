"""A run's history and stalls with a real daemon: the order of what it did, the stall
mark in ls, show and their --json, and on_stall = "cancel" ending the run FAILED."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Client, Daemon, alive, pids_of_run, wait_until

PROGRESS = json.dumps([{"erlang": 100.0, "iteration": 1, "total_iterations": 5}])
MORE = json.dumps([{"erlang": 100.0, "iteration": 2, "total_iterations": 5}])


def cli(daemon: Daemon, *args: str) -> str:
    argv = [sys.executable, "-m", "fusion_runner", *args, "--database-url", daemon.url,
            "--runs-dir", str(daemon.runs_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def history(daemon: Daemon, run_id: str) -> list[dict[str, Any]]:
    shown: dict[str, Any] = json.loads(cli(daemon, "show", run_id, "--json"))
    return list(shown["history"])


def events_until(daemon: Daemon, run_id: str, last: str) -> list[str]:
    def done() -> list[str] | None:
        names = [event["event"] for event in history(daemon, run_id)]
        return names if last in names else None

    return wait_until(done, 10, f"{last} in the history of {run_id}")


def test_a_completed_run_s_history(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {}})
    client.wait_final(run_id)
    assert events_until(daemon, run_id, "final") == ["claimed", "started", "exited", "final"]
    shown = history(daemon, run_id)
    assert {event["worker_id"] for event in shown} == {"test"}
    assert shown[-1]["detail"] == "COMPLETED"
    assert "history:" in cli(daemon, "show", run_id)


def test_the_history_of_a_cancelled_run_lists_the_signals_in_order(
    daemon: Daemon, client: Client
) -> None:
    run_id = client.submit({"sim": {"ignore_term": True, "sleep": "forever"}})
    client.wait_status(run_id, "RUNNING")
    wait_until(lambda: pids_of_run(daemon.run_dir(run_id)), 10, "the simulation's pid")
    client.cancel(run_id)
    assert client.wait_final(run_id)["status"] == "CANCELLED"

    names = events_until(daemon, run_id, "final")
    assert names == ["claimed", "started", "cancel_seen", "sigterm", "sigkill", "exited",
                     "final"]
    details = {event["event"]: event["detail"] for event in history(daemon, run_id)}
    assert details["cancel_seen"] == "status=CANCELLED"
    assert details["final"].startswith("CANCELLED")


def test_a_stalled_run_is_marked_once_and_unmarked_when_progress_moves(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(stall_after_seconds="0.5").start()
    client = daemon.client()
    go_on = tmp_path / "go-on"
    run_id = client.submit({"sim": {"progress": PROGRESS, "until": str(go_on),
                                    "after": MORE, "sleep": "forever"}})
    client.wait_status(run_id, "RUNNING")

    events_until(daemon, run_id, "stalled")
    ls = json.loads(cli(daemon, "ls", "--json"))
    assert ls[0]["stalled_at"] is not None
    assert "RUNNING*" in cli(daemon, "ls")
    assert json.loads(cli(daemon, "show", run_id, "--json"))["stalled_at"] is not None
    assert "stalled" in cli(daemon, "show", run_id)
    assert "RUNNING*" in cli(daemon, "watch", "--once")
    assert daemon.log_text().count(f"run={run_id} action=stalled after=0.5s") == 1

    go_on.touch()
    names = events_until(daemon, run_id, "unstalled")
    assert names[2:4] == ["stalled", "unstalled"]  # (quiet again, it is marked again)
    assert f"run={run_id} action=unstalled" in daemon.log_text()
    assert client.status(run_id) == "RUNNING"
    client.cancel(run_id)
    client.wait_final(run_id)


def test_on_stall_cancel_ends_the_run_failed_with_no_process_left(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(stall_after_seconds="0.5", on_stall="cancel").start()
    client = daemon.client()
    run_id = client.submit({"sim": {"progress": PROGRESS, "workers": 2,
                                    "until": str(tmp_path / "never")}})
    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert row["error_message"] == "stalled: no progress for 0.5 s"
    assert [pid for pid in pids_of_run(daemon.run_dir(run_id)) if alive(pid)] == []
    names = events_until(daemon, run_id, "final")
    assert names[:4] == ["claimed", "started", "stalled", "sigterm"]
    assert names[-1] == "final"


def test_a_run_that_writes_no_progress_is_never_marked(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(stall_after_seconds="0.2", on_stall="cancel").start()
    client = daemon.client()
    done = tmp_path / "done"
    run_id = client.submit({"sim": {"until": str(done)}})
    client.wait_status(run_id, "RUNNING")
    time.sleep(1.5)  # well past the stall time: many passes of the daemon
    assert client.status(run_id) == "RUNNING"
    done.touch()
    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert "stalled" not in [event["event"] for event in history(daemon, run_id)]
    assert "action=stalled" not in daemon.log_text()
