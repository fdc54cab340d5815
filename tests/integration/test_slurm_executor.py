"""The Slurm executor against a real single-node Slurm (tests/slurmcluster.py).

A real daemon with `executor = "slurm"` submits each run as a job; the job runs
the shim on the node (this machine), which writes started.json, progress and
exit.json into the run folder. What a client sees in `runs` is checked, and
what Slurm itself says of the jobs: queued runs stay PENDING, a cancel of a
queued run never starts it, nothing of a cancelled run is left, a restarted
daemon re-attaches without resubmitting, a requeued job is the same run.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Client, Daemon, alive, pids_of_run, wait_until
from tests.slurmcluster import Job, SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

START_TIMEOUT = 60.0  # a job's start: submission, scheduling (sched_interval 1 s), the shim
END_TIMEOUT = 60.0  # a job's end as the daemon writes it (KillWait 5 s included)
NO_PID = (1 << 22) + 42  # above Linux's PID_MAX_LIMIT: no process has it (cleanup signals it)


def slurm_daemon(daemon_factory: Callable[..., Daemon], slurm: SlurmCluster,
                 extra_args: str | None = None, **settings: str) -> Daemon:
    """A daemon whose runs are jobs of the session's cluster, started; `extra_args`
    (slurm_extra_args) through the environment, as a flag's value may not start with -."""
    options = {"executor": "slurm", "slurm_poll_seconds": "0.5",
               "max_concurrent_runs": "4"} | settings
    env = slurm.env | ({"FUSION_RUNNER_SLURM_EXTRA_ARGS": extra_args} if extra_args else {})
    return daemon_factory(**options).start(extra_env=env)


def claim(client: Client, run_id: str) -> sqlite3.Row | None:
    """The daemon's own record of the run (job id, node, why it waits)."""
    with client.connect() as connection:
        row: sqlite3.Row | None = connection.execute(
            "SELECT * FROM fusion_runner_claims WHERE run_id = ?", (run_id,)).fetchone()
        return row


def job_id_of(client: Client, run_id: str) -> str:
    """The job id once the daemon recorded it."""
    def recorded() -> str | None:
        row = claim(client, run_id)
        return row["job_id"] if row is not None and row["job_id"] else None
    return str(wait_until(recorded, START_TIMEOUT, f"the job id of run {run_id}"))


def jobs_of(slurm: SlurmCluster, run_id: str) -> list[Job]:
    return [job for job in slurm.jobs() if job.name == f"fusion-{run_id}"]


def cli(daemon: Daemon, *args: str) -> str:
    """A client command on the daemon's database, as a user types it; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "fusion_runner", *args, "--database-url", daemon.url,
         "--runs-dir", str(daemon.runs_dir)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def shown_lines(text: str) -> list[str]:
    """`show`'s lines with the padding between label and value made one space."""
    return [" ".join(line.split()) for line in text.splitlines()]


def running(client: Client, run_id: str, timeout: float = START_TIMEOUT) -> sqlite3.Row:
    """The row once it is RUNNING with the shim's pid."""
    def started() -> sqlite3.Row | None:
        row = client.row(run_id)
        ok = row is not None and row["status"] == "RUNNING" and row["pid"] is not None
        return row if ok else None
    return wait_until(started, timeout, f"run {run_id} to run")


def finished_lines(daemon: Daemon, run_id: str) -> list[str]:
    return [line for line in daemon.log_text().splitlines()
            if f"run={run_id} action=finished" in line]


def test_a_run_is_held_pending_in_the_queue_then_runs_with_progress_and_completes(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    # Held in Slurm's queue (--hold) until the test releases it: queued, seen as such.
    daemon = slurm_daemon(daemon_factory, slurm, extra_args="--hold")
    client = daemon.client()
    gate = tmp_path / "gate"
    run_id = client.submit({"sim": {
        "progress": json.dumps([{"erlang": 300.0, "iteration": 1, "total_iterations": 3}]),
        "until": str(gate),
        "after": json.dumps([{"erlang": 400.0, "iteration": 2, "total_iterations": 3},
                             {"erlang": 500.0, "iteration": 3, "total_iterations": 3}]),
    }})

    job_id = job_id_of(client, run_id)
    assert slurm.wait_state(job_id, "PENDING").name == f"fusion-{run_id}"
    wait_until(lambda: claim(client, run_id)["queue_reason"] == "JobHeldUser", 10,
               "the queue reason in the claim")
    row = client.row(run_id)
    assert (row["status"], row["pid"], row["pgid"], row["started_at"]) == (
        "PENDING", None, None, None)
    run_dir = daemon.run_dir(run_id)
    assert not (run_dir / "started.json").exists()
    waiting = shown_lines(cli(daemon, "show", run_id))
    assert f"slurm_job {job_id} on -" in waiting and "waiting JobHeldUser" in waiting

    slurm.run("scontrol", "release", job_id)
    row = running(client, run_id)
    started = json.loads((run_dir / "started.json").read_text())
    assert (row["pid"], row["pgid"]) == (started["pid"], started["pgid"])
    assert row["started_at"] is not None and row["started_at"] >= row["created_at"]
    assert "shim.py" in " ".join(psutil.Process(row["pid"]).cmdline())
    recorded = claim(client, run_id)
    assert (recorded["job_id"], recorded["node"], recorded["queue_reason"]) == (
        job_id, slurm.node, None)
    assert slurm.job(job_id).state == "RUNNING"  # type: ignore[union-attr]
    assert f"slurm_job {job_id} on {slurm.node}" in shown_lines(cli(daemon, "show", run_id))
    (listed,) = json.loads(cli(daemon, "ls", "--json"))
    assert (listed["worker_id"], listed["node"]) == ("test", slurm.node)
    # Progress is written while the job runs, not only at its end.
    wait_until(lambda: client.row(run_id)["current_iteration"] == 1, 20, "the first progress")
    assert client.row(run_id)["status"] == "RUNNING"

    gate.touch()
    final = client.wait_final(run_id, timeout=END_TIMEOUT)
    assert (final["status"], final["error_message"]) == ("COMPLETED", None)
    assert (final["current_iteration"], final["current_erlang"]) == (3, 500.0)
    assert final["started_at"] == row["started_at"] and final["pid"] == row["pid"]
    assert final["started_at"] <= final["completed_at"]
    assert slurm.job(job_id).state == "COMPLETED"  # type: ignore[union-attr]
    assert [job.id for job in jobs_of(slurm, run_id)] == [job_id]


def test_an_exit_code_fails_the_run_as_locally(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = slurm_daemon(daemon_factory, slurm)
    client = daemon.client()
    run_id = client.submit({"sim": {"exit": "3", "stderr": "bad load"}})

    final = client.wait_final(run_id, timeout=START_TIMEOUT + END_TIMEOUT)
    assert final["status"] == "FAILED"
    assert final["error_message"].startswith("exit code 3"), final["error_message"]
    assert "bad load" in final["error_message"]
    assert final["pid"] is not None and final["started_at"] is not None


def test_a_run_cancelled_while_queued_never_starts(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = slurm_daemon(daemon_factory, slurm, extra_args="--hold")
    client = daemon.client()
    marker = tmp_path / "marker"
    run_id = client.submit({"sim": {"marker": str(marker)}})
    job_id = job_id_of(client, run_id)
    slurm.wait_state(job_id, "PENDING")
    assert client.status(run_id) == "PENDING"

    client.cancel(run_id)
    final = client.wait_final(run_id, timeout=END_TIMEOUT)
    assert final["status"] == "CANCELLED"
    assert (final["pid"], final["started_at"]) == (None, None)
    job = slurm.wait_state(job_id, "CANCELLED")
    assert slurm.show_job(job.id)["RunTime"] == "00:00:00"
    # Released now, a job still held would start: it is gone instead.
    slurm.run("scontrol", "release", job_id, check=False)
    time.sleep(2)
    run_dir = daemon.run_dir(run_id)
    assert not (run_dir / "started.json").exists()
    assert not marker.exists()
    assert f"run={run_id} action=finished status=CANCELLED" in daemon.log_text()


def test_a_run_cancelled_while_running_leaves_no_process_on_the_node(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = slurm_daemon(daemon_factory, slurm)
    client = daemon.client()
    # The simulation and its pool workers ignore SIGTERM: only SIGKILL ends them (the
    # daemon's after stop_grace_seconds, Slurm's after KillWait).
    run_id = client.submit({"sim": {"workers": "2", "sleep": "forever", "ignore_term": "True"}})
    row = running(client, run_id)
    job_id = claim(client, run_id)["job_id"]
    run_dir = daemon.run_dir(run_id)
    # The simulation and its two pool workers, all alive.
    pids = wait_until(lambda: len(found := pids_of_run(run_dir)) == 3 and found, 30,
                      "the simulation and its workers")
    assert all(alive(pid) for pid in [*pids, row["pid"]])

    client.cancel(run_id)
    final = client.wait_final(run_id, timeout=END_TIMEOUT)
    assert final["status"] == "CANCELLED"
    # The row is final only once nothing of the run is left.
    assert [pid for pid in [*pids, row["pid"]] if alive(pid)] == []
    assert slurm.job(job_id).state == "CANCELLED"  # type: ignore[union-attr]


def test_a_killed_daemon_is_restarted_and_reattaches_to_its_job(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = slurm_daemon(daemon_factory, slurm)
    client = daemon.client()
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    run_id = client.submit({"sim": {"marker": str(marker), "until": str(gate)}})
    row = running(client, run_id)
    job_id = claim(client, run_id)["job_id"]
    wait_until(marker.exists, 30, "the simulation to start")

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    assert slurm.job(job_id).state == "RUNNING"  # type: ignore[union-attr]
    daemon.start(extra_env=slurm.env)
    assert f"run={run_id} action=adopted" in daemon.log_text()

    gate.touch()
    final = client.wait_final(run_id, timeout=END_TIMEOUT)
    assert (final["status"], final["error_message"]) == ("COMPLETED", None)
    assert (final["pid"], final["started_at"]) == (row["pid"], row["started_at"])
    assert marker.read_text() == f"{run_id}\n"  # started once
    assert [job.id for job in jobs_of(slurm, run_id)] == [job_id]  # submitted once
    assert claim(client, run_id)["job_id"] == job_id
    assert len(finished_lines(daemon, run_id)) == 1


def test_a_daemon_restarted_while_its_job_is_queued_reattaches_and_the_run_starts_once(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = slurm_daemon(daemon_factory, slurm, extra_args="--hold")
    client = daemon.client()
    marker = tmp_path / "marker"
    run_id = client.submit({"sim": {"marker": str(marker)}})
    job_id = job_id_of(client, run_id)
    slurm.wait_state(job_id, "PENDING")

    assert daemon.stop(signal.SIGKILL) is not None
    daemon.start(extra_env=slurm.env)
    assert f"run={run_id} action=adopted" in daemon.log_text()
    row = client.row(run_id)
    assert (row["status"], row["pid"]) == ("PENDING", None)  # still queued, still held

    slurm.run("scontrol", "release", job_id)
    final = client.wait_final(run_id, timeout=END_TIMEOUT)
    assert (final["status"], final["error_message"]) == ("COMPLETED", None)
    assert final["pid"] is not None and final["started_at"] is not None
    assert marker.read_text() == f"{run_id}\n"  # started once
    assert [job.id for job in jobs_of(slurm, run_id)] == [job_id]  # submitted once


def test_a_restarted_daemon_ends_a_run_whose_job_slurm_no_longer_knows(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon]) -> None:
    # What a daemon of worker `test` left of a run whose job ended while no daemon
    # ran, without an exit record (its shim killed), and was forgotten by slurmctld
    # (MinJobAge): no such job in squeue. It must not be taken for a live one.
    daemon = slurm_daemon(daemon_factory, slurm)
    daemon.stop()
    client = daemon.client()
    run_id, job_id = "0000000000ab", "999999"
    (daemon.runs_dir / run_id / "logs").mkdir(parents=True)
    now = datetime.now(UTC).replace(tzinfo=None)
    client.execute(
        "INSERT INTO runs (id, name, status, config_json, template, created_at, started_at, "
        "pid, pgid) VALUES (?, 'x', 'RUNNING', '{\"sim\": {}}', 't', ?, ?, ?, ?)",
        (run_id, now, now, NO_PID, NO_PID))
    client.execute(
        "INSERT INTO fusion_runner_claims (run_id, worker_id, claimed_at, queued_at, pid, "
        "pgid, run_dir, job_id, node) VALUES (?, 'test', ?, ?, ?, ?, ?, ?, ?)",
        (run_id, now, now, NO_PID, NO_PID, str(daemon.runs_dir / run_id), job_id, slurm.node))

    daemon.start(extra_env=slurm.env)
    final = client.wait_final(run_id, timeout=30)
    assert final["status"] == "FAILED"
    assert final["error_message"].startswith(
        f"Slurm job {job_id} ended (gone from squeue) and left no exit record"), (
        final["error_message"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ignore_term", [False, True], ids=["stops_at_warning", "killed"])
def test_a_job_at_its_time_limit_fails_naming_it(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon], ignore_term: bool) -> None:
    # One minute. Slurm's SIGTERM before the limit (sbatch --signal) comes within
    # its timer's 30 s; a simulation that ignores it is killed at the limit (TIMEOUT,
    # within another 30 s, and KillWait).
    daemon = slurm_daemon(daemon_factory, slurm, slurm_time_limit="1")
    client = daemon.client()
    run_id = client.submit({"sim": {"sleep": "forever", "ignore_term": str(ignore_term)}})
    running(client, run_id)
    job_id = claim(client, run_id)["job_id"]

    final = client.wait_final(run_id, timeout=200)
    assert final["status"] == "FAILED"
    message = final["error_message"]
    assert message.startswith(f"Slurm job {job_id} TIMEOUT: "), message
    assert "time limit" in message
    job = slurm.job(job_id)
    assert job is not None
    if ignore_term:
        assert job.state == "TIMEOUT"
    else:
        # It ended by itself, stopped by the warning: Slurm does not call it TIMEOUT.
        assert job.state != "TIMEOUT"
        assert "killed by signal SIGTERM" in message
    assert [pid for pid in pids_of_run(daemon.run_dir(run_id)) if alive(pid)] == []


def test_a_run_that_cannot_be_submitted_fails_with_sbatchs_message(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = slurm_daemon(daemon_factory, slurm, slurm_partition="nope")
    client = daemon.client()
    run_id = client.submit({"sim": {}})

    final = client.wait_final(run_id, timeout=30)
    assert final["status"] == "FAILED"
    assert "Invalid partition name specified" in final["error_message"], final["error_message"]
    assert final["error_message"].startswith("sbatch: ")
    assert "sbatch: sbatch" not in final["error_message"]
    assert jobs_of(slurm, run_id) == []
    assert (final["pid"], final["started_at"]) == (None, None)


def test_a_requeued_job_goes_back_to_pending_and_completes_once(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = slurm_daemon(daemon_factory, slurm)
    client = daemon.client()
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    run_id = client.submit({"sim": {"marker": str(marker), "until": str(gate)}})
    first = running(client, run_id)
    job_id = claim(client, run_id)["job_id"]
    wait_until(marker.exists, 30, "the first attempt")
    run_dir = daemon.run_dir(run_id)

    slurm.run("scontrol", "requeue", job_id)
    # Back in the queue: PENDING, nothing of the first attempt in the row.
    pending = client.wait_status(run_id, "PENDING", timeout=30)
    assert (pending["pid"], pending["pgid"], pending["started_at"]) == (None, None, None)
    assert slurm.job(job_id).restarts == 1  # type: ignore[union-attr]
    wait_until(lambda: not alive(first["pid"]), 30, "the first attempt's shim to end")
    # Until it starts again: the first attempt's end is not the run's.
    second = running(client, run_id, timeout=slurm.requeue_delay + START_TIMEOUT)
    assert second["pid"] != first["pid"]
    assert json.loads((run_dir / "started.json").read_text())["attempt"] == 1
    # The first attempt's records set aside, not taken for the second's.
    assert json.loads((run_dir / "started.json.attempt-0").read_text())["pid"] == first["pid"]
    wait_until(lambda: marker.read_text().count("\n") == 2, 30, "the second attempt")

    gate.touch()
    final = client.wait_final(run_id, timeout=END_TIMEOUT)
    assert (final["status"], final["error_message"]) == ("COMPLETED", None)
    assert final["pid"] == second["pid"]
    assert json.loads((run_dir / "exit.json").read_text())["attempt"] == 1
    assert [job.id for job in jobs_of(slurm, run_id)] == [job_id]
    assert finished_lines(daemon, run_id) == [
        line for line in daemon.log_text().splitlines()
        if f"run={run_id} action=finished status=COMPLETED" in line]
    assert len(finished_lines(daemon, run_id)) == 1
    assert f"run={run_id} action=requeued" in daemon.log_text()


def running_count(client: Client) -> int:
    return client.count("RUNNING")


def test_twenty_runs_through_the_node_never_more_running_than_it_holds(
        slurm: SlurmCluster, daemon_factory: Callable[..., Daemon]) -> None:
    daemon = slurm_daemon(daemon_factory, slurm, max_concurrent_runs="40")
    client = daemon.client()
    ids = [client.submit({"sim": {"sleep": "0.5"}}, name=f"run{n}") for n in range(20)]

    most = 0
    deadline = time.monotonic() + 150

    def final_rows() -> list[Any]:
        rows = [client.row(run_id) for run_id in ids]
        return [row for row in rows if row is not None and row["completed_at"] is not None]
    while len(final_rows()) < len(ids):
        assert time.monotonic() < deadline, f"{len(final_rows())} of {len(ids)} ended"
        most = max(most, running_count(client))
        time.sleep(0.02)

    assert all(client.status(run_id) == "COMPLETED" for run_id in ids)
    assert 1 <= most <= slurm.cpus, most
    names = {f"fusion-{run_id}" for run_id in ids}
    jobs = [job for job in slurm.jobs() if job.name in names]
    assert sorted(job.name for job in jobs) == sorted(names)  # one job a run
    assert {job.state for job in jobs} == {"COMPLETED"}
