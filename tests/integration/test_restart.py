"""Restarts and shutdown: runs outlive the daemon, and the next one gets them right.

Every test runs on SQLite, then PostgreSQL (the `backend` fixture).
"""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import SQLITE_ONLY, Client, Daemon, alive, pids_of_run, wait_until

pytestmark = pytest.mark.usefixtures("backend")


def started(client: Client, run_id: str) -> Any:
    return wait_until(
        lambda: (row := client.row(run_id)) is not None and row["pid"] is not None and row,
        10, f"run {run_id} to start",
    )


def run_pids(daemon: Daemon, run_id: str, count: int) -> list[int]:
    def listed() -> list[int]:
        pids = pids_of_run(daemon.run_dir(run_id))
        return pids if len(pids) >= count else []

    return wait_until(listed, 10, f"{count} processes of run {run_id}")


def kill_daemon(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait(10)
    if daemon.is_postgres:
        # The server ends the dead daemon's sessions (and the worker lock they
        # hold) when it sees their sockets close: wait for it, so the next
        # daemon of this worker id is not refused.
        client = daemon.client()
        wait_until(lambda: client.other_sessions() == 0, 10, "the killed daemon's sessions")


def test_run_survives_a_killed_daemon_and_is_adopted_with_its_progress(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    run_id = client.submit({"sim": {"until": str(release)}})
    row = started(client, run_id)
    progress = daemon.run_dir(run_id) / "progress.jsonl"
    progress.write_text('{"erlang": 300.0, "iteration": 1, "total_iterations": 3}\n')
    wait_until(lambda: client.row(run_id)["current_iteration"] == 1, 10, "first progress")

    kill_daemon(daemon)
    assert alive(row["pid"])
    daemon.start()
    with open(progress, "a") as file:
        file.write('{"erlang": 400.0, "iteration": 2, "total_iterations": 3}\n')

    wait_until(lambda: client.row(run_id)["current_erlang"] == 400.0, 10, "adopted progress")
    assert f"run={run_id} action=adopted" in daemon.log_text()
    release.touch()
    final = client.wait_final(run_id)
    assert final["status"] == "COMPLETED"
    assert final["pid"] == row["pid"] and final["started_at"] == row["started_at"]
    assert final["current_iteration"] == 2


def test_exit_while_no_daemon_runs_gets_its_true_outcome(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    run_id = client.submit({"sim": {"until": str(release), "exit": 4, "stderr": "bad load"}})
    started(client, run_id)

    kill_daemon(daemon)
    release.touch()
    wait_until((daemon.run_dir(run_id) / "exit.json").exists, 10, "the shim's exit record")
    daemon.start()

    row = client.wait_final(run_id)
    assert row["status"] == "FAILED"
    assert "exit code 4" in row["error_message"]


def insert_owned_running(client: Client, run_id: str, *, pid: int | None,
                         start_time: float | None, run_dir: Path, config: str) -> None:
    """What a daemon of worker `test` that died right after its claim leaves behind."""
    now = datetime.now(UTC).replace(tzinfo=None)
    client.execute(
        "INSERT INTO runs (id, name, status, config_json, template, created_at, pid, pgid) "
        "VALUES (?, 'x', 'RUNNING', ?, 't', ?, ?, ?)",
        (run_id, config, now, pid, pid),
    )
    client.execute(
        "INSERT INTO fusion_runner_claims (run_id, worker_id, claimed_at, pid, pgid, "
        "process_start_time, run_dir) VALUES (?, 'test', ?, ?, ?, ?, ?)",
        (run_id, now, pid, pid, start_time, str(run_dir)),
    )


def test_reused_pid_is_not_adopted(daemon: Daemon, tmp_path: Path) -> None:
    kill_daemon(daemon)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
    try:
        run_id = "0000000000aa"
        insert_owned_running(
            daemon.client(), run_id, pid=unrelated.pid,
            start_time=psutil.Process(unrelated.pid).create_time() - 1000,
            run_dir=daemon.runs_dir / run_id, config='{"sim": {}}',
        )
        daemon.start()
        row = daemon.client().wait_final(run_id)

        assert row["status"] == "FAILED"
        assert "could not be recovered" in row["error_message"]
        assert "another process" in row["error_message"]
        assert unrelated.poll() is None  # never signalled
        assert f"run={run_id} action=adopted" not in daemon.log_text()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_claimed_but_never_started_run_is_requeued_and_runs_once(
    daemon: Daemon, tmp_path: Path
) -> None:
    kill_daemon(daemon)
    marker = tmp_path / "marker"
    run_id = "0000000000bb"
    insert_owned_running(daemon.client(), run_id, pid=None, start_time=None,
                         run_dir=daemon.runs_dir / run_id,
                         config=json.dumps({"sim": {"marker": str(marker)}}))
    daemon.start()

    row = daemon.client().wait_final(run_id)

    assert row["status"] == "COMPLETED"
    assert marker.read_text().split() == [run_id]
    assert f"run={run_id} action=requeued" in daemon.log_text()


def test_sigterm_in_detach_mode_leaves_runs_for_the_next_daemon(
    daemon: Daemon, client: Client
) -> None:
    run_id = client.submit({"sim": {"workers": 2, "sleep": "forever"}})
    row = started(client, run_id)
    pids = run_pids(daemon, run_id, 3)

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=2) == 0
    assert all(alive(pid) for pid in [row["pid"], *pids])
    assert client.status(run_id) == "RUNNING"

    daemon.start()
    client.cancel(run_id)
    assert client.wait_final(run_id)["status"] == "CANCELLED"
    assert not any(alive(pid) for pid in [row["pid"], *pids])


def test_sigterm_in_terminate_mode_stops_every_run(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(on_shutdown="terminate", max_concurrent_runs="2").start()
    client = daemon.client()
    ids = [client.submit({"sim": {"workers": 2, "sleep": "forever"}}) for _ in range(2)]
    rows = [started(client, run_id) for run_id in ids]
    pids = [pid for run_id in ids for pid in run_pids(daemon, run_id, 3)]

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=2 + 2) == 0

    assert not any(alive(pid) for pid in [*pids, *(row["pid"] for row in rows)])
    for run_id in ids:
        row = client.row(run_id)
        assert row["status"] == "FAILED" and row["error_message"] == "runner shut down"
        assert row["completed_at"] is not None


@SQLITE_ONLY  # systemd's protocol, not the database's: once is enough
def test_systemd_notifications(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(10)
        daemon = daemon_factory()
        daemon.start({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}, wait_ready=False)
        messages: list[tuple[float, str]] = []

        def receive_until(predicate: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 10
            while not predicate() and time.monotonic() < deadline:
                messages.append((time.monotonic(), listener.recv(4096).decode()))

        receive_until(lambda: any(m == "READY=1" for _, m in messages))
        receive_until(lambda: sum(m == "WATCHDOG=1" for _, m in messages) >= 6)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        receive_until(lambda: any(m == "STOPPING=1" for _, m in messages))

    texts = [m for _, m in messages]
    assert texts.index("READY=1") < texts.index("WATCHDOG=1")
    assert "STATUS=0 running, 0 pending" in texts
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(pings))
    # every 0.2 s: half of WATCHDOG_USEC (receive times: a busy machine may
    # deliver two at once, so the typical gap is judged, not the smallest)
    assert 0.15 <= statistics.median(gaps) <= 0.3
    assert len(pings) <= (pings[-1] - pings[0]) / 0.2 + 2  # never a flood
    assert texts[-1] == "STOPPING=1"


def test_adopted_run_continues_from_its_offset_without_reapplying_old_lines(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    run_id = client.submit({"sim": {"until": str(release)}})
    started(client, run_id)
    progress = daemon.run_dir(run_id) / "progress.jsonl"
    old_line = '{"erlang": 300.0, "iteration": 1, "total_iterations": 3}\n'
    progress.write_text(old_line)
    wait_until(lambda: client.row(run_id)["current_iteration"] == 1, 10, "first progress")

    kill_daemon(daemon)
    # Rewrite the already-applied line in place (same size, same file): a
    # daemon that re-read from the start would now see iteration 8.
    with open(progress, "r+") as file:
        file.write(old_line.replace('"iteration": 1', '"iteration": 8'))
    daemon.start()
    with open(progress, "a") as file:
        file.write('{"erlang": 400.0}\n')

    wait_until(lambda: client.row(run_id)["current_erlang"] == 400.0, 10, "adopted progress")
    assert client.row(run_id)["current_iteration"] == 1
    release.touch()
    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert client.row(run_id)["current_iteration"] == 1


def test_run_spawned_but_not_recorded_is_adopted_not_started_twice(
    daemon: Daemon, tmp_path: Path
) -> None:
    kill_daemon(daemon)
    run_id = "0000000000cc"
    marker = tmp_path / "marker"
    insert_owned_running(daemon.client(), run_id, pid=None, start_time=None,
                         run_dir=daemon.runs_dir / run_id,
                         config=json.dumps({"sim": {"marker": str(marker)}}))
    # What the crashed daemon had spawned: a session leader naming the run.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={"FUSION_RUN_ID": run_id}, start_new_session=True,
    )
    try:
        daemon.start()
        client = daemon.client()
        row = wait_until(lambda: (r := client.row(run_id)) and r["pid"] and r, 10, "its pid")
        assert row["pid"] == orphan.pid and row["status"] == "RUNNING"
        assert f"run={run_id} action=adopted" in daemon.log_text()

        client.cancel(run_id)
        assert client.wait_final(run_id)["status"] == "CANCELLED"
        assert orphan.wait(timeout=5) is not None
        assert not marker.exists()  # the simulation never ran a second time
    finally:
        orphan.kill()
        orphan.wait()
