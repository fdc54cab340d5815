"""Faults that really happen: none ends the daemon, starts a run twice or loses an outcome.

A real daemon on a real SQLite file, real simulations, real locks and signals.
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Client, Daemon, alive, pids_of_run, wait_until


def started(client: Client, run_id: str) -> sqlite3.Row:
    return wait_until(
        lambda: (row := client.row(run_id)) is not None and row["pid"] is not None and row,
        10, f"run {run_id} to start",
    )


def assert_alive(daemon: Daemon) -> None:
    assert daemon.process is not None
    assert daemon.process.poll() is None, daemon.log_text()[-3000:]


def no_process_left(daemon: Daemon, run_id: str) -> bool:
    return not any(alive(pid) for pid in pids_of_run(daemon.run_dir(run_id)))


@contextmanager
def write_lock(database: Path) -> Iterator[sqlite3.Connection]:
    """A client holding SQLite's write lock (BEGIN IMMEDIATE) until the block ends."""
    connection = sqlite3.connect(database, timeout=10, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
        connection.execute("COMMIT")
    finally:
        connection.close()


def database_errors(daemon: Daemon) -> int:
    return daemon.log_text().count("action=database_lost")


# --- 1. the write lock held past the busy timeout -------------------------------------------


def test_a_client_holding_the_write_lock_past_the_busy_timeout_ends_nothing(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(max_concurrent_runs="3").start()
    client = Client(daemon.database)
    gate = tmp_path / "gate"
    last = {"erlang": 700.0, "iteration": 5, "total_iterations": 5}
    runs = {
        client.submit({"sim": {"until": str(gate), "after": json.dumps([last]), "exit": code}})
        : code for code in (0, 3)
    }
    # Reports its progress while the lock is held, and runs on after it.
    going_id = client.submit({"sim": {"until": str(gate), "after": json.dumps([last]),
                                      "sleep": "forever"}})
    for run_id in [*runs, going_id]:
        started(client, run_id)
    # Committed before the lock, its turn comes while the lock is held (the two
    # runs above end then): it starts, reports progress and ends once it goes.
    queued_id = client.submit({"sim": {"progress": json.dumps([last])}})
    errors_before = database_errors(daemon)
    with write_lock(daemon.database) as locked:
        # A run inserted inside the locked transaction appears when the lock goes.
        late_id = "0123456789ab"
        locked.execute(
            "INSERT INTO runs (id, name, status, config_json, template, created_at) "
            "VALUES (?, 'late', 'PENDING', '{\"sim\": {}}', 'minimal.ini', "
            "strftime('%Y-%m-%d %H:%M:%f', 'now'))", (late_id,),
        )
        gate.touch()  # the simulations now write their last progress and exit
        wait_until(lambda: database_errors(daemon) > errors_before, 30,
                   "the daemon to meet the lock")
        assert_alive(daemon)
    for run_id, code in runs.items():
        row = client.wait_final(run_id, timeout=30)
        assert row["status"] == ("COMPLETED" if code == 0 else "FAILED")
        assert (row["current_erlang"], row["current_iteration"]) == (700.0, 5)
        assert row["pid"] is not None and row["started_at"] is not None
    wait_until(lambda: (row := client.row(going_id)) is not None
               and row["status"] == "RUNNING" and row["current_iteration"] == 5, 30,
               "the progress written under the lock")
    client.cancel(going_id)
    assert client.wait_final(going_id)["status"] == "CANCELLED"
    queued = client.wait_final(queued_id, timeout=30)
    assert queued["status"] == "COMPLETED"
    assert (queued["current_erlang"], queued["current_iteration"]) == (700.0, 5)
    assert client.wait_final(late_id, timeout=30)["status"] == "COMPLETED"
    assert_alive(daemon)


# --- 2. a database error between claim and spawn --------------------------------------------


def test_a_database_error_right_after_the_spawn_still_records_pid_pgid_started_at(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    gate, marker = tmp_path / "gate", tmp_path / "marker"
    with client.connect() as connection:
        # A real failure of the statement that records the spawn, while the
        # gate table has a row (the client's trigger aborts it).
        connection.executescript("""
            CREATE TABLE hold (x);
            INSERT INTO hold VALUES (1);
            CREATE TRIGGER hold_start BEFORE UPDATE OF pid ON runs
            WHEN EXISTS (SELECT 1 FROM hold) BEGIN SELECT RAISE(ABORT, 'held by a client'); END;
        """)
    run_id = client.submit({"sim": {"until": str(gate), "marker": str(marker)}})
    wait_until(lambda: marker.exists(), 10, "the simulation to start")
    wait_until(lambda: database_errors(daemon) > 0, 10, "the failed write to be logged")
    row = client.row(run_id)
    assert row is not None and row["status"] == "RUNNING" and row["pid"] is None
    with client.connect() as connection:
        connection.execute("DELETE FROM hold")
    row = started(client, run_id)
    assert row["pgid"] == row["pid"] and row["started_at"] is not None
    gate.touch()
    final = client.wait_final(run_id)
    assert final["status"] == "COMPLETED" and final["pid"] == row["pid"]
    assert marker.read_text().split() == [run_id]
    assert_alive(daemon)


# --- 3. statuses the SPEC does not name, and other client-written final statuses ------------


def set_status(client: Client, run_id: str, status: str, message: str | None = None) -> None:
    with client.connect() as connection:
        connection.execute("UPDATE runs SET status = ?, error_message = ? WHERE id = ?",
                           (status, message, run_id))


def test_a_status_the_spec_does_not_name_stops_the_run_and_stays(
    daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory(max_concurrent_runs="3").start()
    client = Client(daemon.database)
    runs = {status: client.submit({"sim": {"workers": 2, "sleep": "forever"}})
            for status in ("cancelled", "garbage")}
    for run_id in runs.values():
        started(client, run_id)
        wait_until(lambda run_id=run_id: len(pids_of_run(daemon.run_dir(run_id))) >= 3, 10,
                   "the workers to start")
    for status, run_id in runs.items():
        set_status(client, run_id, status)
    for status, run_id in runs.items():
        wait_until(lambda run_id=run_id: no_process_left(daemon, run_id), 10,
                   f"run {run_id} ({status}) to be stopped")
        row = wait_until(lambda run_id=run_id: (r := client.row(run_id))["completed_at"] and r,
                         10, "completed_at")
        assert row["status"] == status
        assert f"status='{status}'" in daemon.log_text()
    assert_alive(daemon)
    # The daemon goes on serving: a new run completes.
    assert client.wait_final(client.submit())["status"] == "COMPLETED"


def test_a_pending_like_status_is_never_claimed(daemon: Daemon, client: Client) -> None:
    odd = "0ddba11c0ffe"
    with client.connect() as connection:
        connection.execute(
            "INSERT INTO runs (id, name, status, config_json, template, created_at) "
            "VALUES (?, 'odd', 'pending', '{\"sim\": {}}', 'minimal.ini', "
            "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 minute'))", (odd,))
    # Inserted after it, so a claim of the odd row would have come first.
    assert client.wait_final(client.submit())["status"] == "COMPLETED"
    row = client.row(odd)
    assert row is not None and row["status"] == "pending" and row["pid"] is None
    assert not daemon.run_dir(odd).exists()


def test_a_client_writing_failed_on_a_running_run_leaves_no_process(
    daemon: Daemon, client: Client
) -> None:
    run_id = client.submit({"sim": {"workers": 2, "sleep": "forever"}})
    started(client, run_id)
    wait_until(lambda: len(pids_of_run(daemon.run_dir(run_id))) >= 3, 10, "the workers")
    set_status(client, run_id, "FAILED", "Server restarted while run was active")
    wait_until(lambda: no_process_left(daemon, run_id), 10, "the run's processes to end")
    row = wait_until(lambda: (r := client.row(run_id))["completed_at"] and r, 10, "completed_at")
    assert row["status"] == "FAILED"
    assert row["error_message"] == "Server restarted while run was active"


# --- 4. SIGHUP -----------------------------------------------------------------------------


def test_sighup_reloads_and_the_daemon_goes_on(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {"sleep": "forever"}})
    started(client, run_id)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "action=reload " in daemon.log_text(), 10, "the SIGHUP log line")
    assert_alive(daemon)
    client.cancel(run_id)
    assert client.wait_final(run_id)["status"] == "CANCELLED"
    assert no_process_left(daemon, run_id)


# --- 6. an exit record that cannot be written -----------------------------------------------


def test_a_run_folder_deleted_under_the_run_keeps_the_simulations_exit_code(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = client.submit({"sim": {"until": str(gate), "exit": 3}})
    started(client, run_id)
    pids = wait_until(lambda: pids_of_run(daemon.run_dir(run_id)), 10, "the simulation's pid")
    shutil.rmtree(daemon.run_dir(run_id))
    gate.touch()
    row = client.wait_final(run_id)
    assert row["status"] == "FAILED"
    message = row["error_message"]
    assert message.startswith("exit code 3 (exit record not saved:"), message
    assert "No such file or directory" in message
    assert not any(alive(pid) for pid in pids)
    assert_alive(daemon)


def test_an_exit_record_that_cannot_replace_its_place_leaves_no_temporary_file(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    run_id = client.submit({"sim": {"until": str(gate), "signal": "SIGKILL"}})
    started(client, run_id)
    in_the_way = daemon.run_dir(run_id) / "exit.json"
    (in_the_way / "occupied").mkdir(parents=True)  # a folder where the record goes
    gate.touch()
    row = client.wait_final(run_id)
    assert row["status"] == "FAILED"
    assert row["error_message"].startswith("killed by signal SIGKILL (exit record not saved:")
    assert "Is a directory" in row["error_message"]
    assert not (daemon.run_dir(run_id) / "exit.json.tmp").exists()


# --- 7. a daemon killed around its spawns never starts a run twice ---------------------------


def unrecorded_run(client: Client, daemon: Daemon, worker: str = "test") -> str:
    """A row as a daemon leaves it when it dies after claiming, before recording a spawn."""
    run_id = client.submit({"sim": {}})
    # Create the daemon's tables as a stopped daemon would have left them.
    with client.connect() as connection:
        connection.execute("UPDATE runs SET status = 'RUNNING' WHERE id = ?", (run_id,))
        connection.execute(
            "INSERT INTO fusion_runner_claims (run_id, worker_id, claimed_at) "
            "VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))", (run_id, worker))
    (daemon.run_dir(run_id) / "logs").mkdir(parents=True)
    return run_id


def test_a_run_spawned_but_never_recorded_gets_its_outcome_and_is_not_run_again(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory().start()
    daemon.stop()
    client = Client(daemon.database)
    ended = unrecorded_run(client, daemon)
    record = {"exit_code": 4, "signal": None, "spawn_error": None, "shim_pid": 4242}
    (daemon.run_dir(ended) / "exit.json").write_text(json.dumps(record))
    (daemon.run_dir(ended) / ".spawned").touch()
    (daemon.run_dir(ended) / "logs" / "sim.log").write_text("boom\n")
    vanished = unrecorded_run(client, daemon)
    (daemon.run_dir(vanished) / ".spawned").touch()
    never = unrecorded_run(client, daemon)
    daemon.start()
    row = client.wait_final(ended)
    assert (row["status"], row["pid"]) == ("FAILED", 4242)
    assert row["error_message"] == "exit code 4\nboom" and row["started_at"] is not None
    row = client.wait_final(vanished)
    assert row["status"] == "FAILED" and "not started again" in row["error_message"]
    assert client.wait_final(never)["status"] == "COMPLETED"
    assert f"run={never} action=requeued" in daemon.log_text()
    for run_id in (ended, vanished):
        assert not (daemon.run_dir(run_id) / "output" / "seen.json").exists()


def count_files(runs_dir: Path, pattern: str) -> int:
    return len(list(runs_dir.glob(pattern))) if runs_dir.exists() else 0


def kill_when(daemon: Daemon, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """SIGKILL the daemon the moment `condition` holds (polled tightly), or at `timeout`."""
    assert daemon.process is not None
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline and daemon.process.poll() is None:
        time.sleep(0.0005)
    daemon.process.kill()
    daemon.process.wait(10)


def test_a_daemon_killed_at_random_moments_around_its_spawns_never_starts_a_run_twice(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    daemon = daemon_factory(max_concurrent_runs="4").start()
    daemon.stop()
    client = Client(daemon.database)
    run_ids = [client.submit({"sim": {"marker": str(marker)}}) for _ in range(24)]
    rng = random.Random(9)

    def open_runs() -> int:
        with client.connect() as connection:
            query = "SELECT COUNT(*) FROM runs WHERE completed_at IS NULL"
            return int(connection.execute(query).fetchone()[0])

    for _ in range(40):
        if open_runs() == 0:
            break
        # Kill on the next folder laid out (before its spawn) or the next spawn
        # marker (at the spawn), a random number of them ahead.
        pattern = rng.choice(["*/config.ini", "*/.spawned"])
        target = count_files(daemon.runs_dir, pattern) + rng.randint(0, 2)
        daemon.start(wait_ready=False)
        kill_when(daemon, lambda p=pattern, t=target: count_files(daemon.runs_dir, p) > t)
    daemon.start()
    wait_until(lambda: open_runs() == 0, 60, "every run to end")
    starts = collections.Counter(marker.read_text().split()) if marker.exists() else {}
    assert max(starts.values(), default=0) <= 1, starts
    for run_id in run_ids:
        row = client.row(run_id)
        assert row is not None
        if row["status"] == "COMPLETED":
            assert starts.get(run_id) == 1
        else:
            # Only a run whose start the kill cut short may fail, and it says so.
            assert row["status"] == "FAILED" and "not started again" in row["error_message"]
    assert sum(1 for run_id in run_ids if client.status(run_id) == "COMPLETED") >= 12
