"""Daemons on several hosts sharing one PostgreSQL database (issue 13).

Each daemon plays a host of its own: its own worker id and root (runs dir,
log), one database. A run's directory is in the runs dir of the daemon that
claimed it, and its `run=ID action=started` line in that daemon's log only.
The session's server is real (tests/pgserver.py); one test restarts it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients import PgClient
from tests.conftest import Daemon, alive, pids_of_run, wait_until
from tests.pgserver import PgServer

pytestmark = pytest.mark.postgres

FINAL = ("COMPLETED", "FAILED", "CANCELLED")
SLOW_POLL = "30"  # what a daemon would wait without wake-ups; no test may wait that long
PROMPT = 10.0  # bound for what a wake-up must bring about at once (a third of SLOW_POLL)


def hosts(daemon_factory: Callable[..., Daemon], tmp_path: Path, pg_url: str, count: int,
          **settings: str) -> list[Daemon]:
    """`count` daemons, w1..wN, each with a root of its own, all on pg_url; started."""
    return [
        daemon_factory(root=tmp_path / f"w{n}", database_url=pg_url, worker_id=f"w{n}",
                       **settings).start()
        for n in range(1, count + 1)
    ]


def owners(daemons: list[Daemon], run_id: str) -> list[Daemon]:
    """The daemons that laid out a directory for the run."""
    return [daemon for daemon in daemons if daemon.run_dir(run_id).exists()]


def started_lines(daemon: Daemon) -> list[str]:
    """Run ids in the daemon's `action=started` lines, one per spawn."""
    found = []
    for line in daemon.log_text().splitlines():
        if " action=started" in line and "run=" in line:
            found.append(line.split("run=", 1)[1].split()[0])
    return found


def assert_serving(*daemons: Daemon) -> None:
    for daemon in daemons:
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log_text()


def running_with_pid(client: PgClient, run_id: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        row = client.row(run_id)
        return row if row and row["status"] == "RUNNING" and row["pid"] is not None else None

    return wait_until(reached, timeout, f"run {run_id} to be RUNNING with its pid")


@pytest.mark.timeout(300)
def test_three_hosts_share_200_runs_each_spawned_exactly_once(
    pg_url: str, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemons = hosts(daemon_factory, tmp_path, pg_url, 3, max_concurrent_runs="8")
    client = PgClient(pg_url)
    marker = tmp_path / "marker"
    ids: list[str] = []
    for _burst in range(10):
        ids += client.submit_many([{"sim": {"marker": str(marker)}}] * 20)
        time.sleep(0.1)  # the next burst lands while the daemons are claiming this one

    def all_final() -> bool:
        finals = sum(client.count(status) for status in FINAL)
        return finals == len(ids)

    wait_until(all_final, 180, f"{len(ids)} runs to end")

    rows = client.rows()
    assert len(rows) == len(ids) == 200
    not_completed = [(r["id"], r["status"], r["error_message"]) for r in rows
                     if r["status"] != "COMPLETED" or r["completed_at"] is None]
    assert not_completed == []
    spawned = marker.read_text().split()
    assert sorted(spawned) == sorted(ids)  # every run spawned, none twice
    per_daemon = {daemon.settings["worker-id"]: started_lines(daemon) for daemon in daemons}
    claims = [run_id for lines in per_daemon.values() for run_id in lines]
    assert sorted(claims) == sorted(ids), "each run started by exactly one worker"
    for daemon in daemons:
        for run_id in per_daemon[daemon.settings["worker-id"]]:
            assert owners(daemons, run_id) == [daemon]
    assert_serving(*daemons)


@pytest.mark.timeout(90)
def test_a_run_inserted_while_every_daemon_idles_starts_without_waiting_for_the_poll(
    pg_url: str, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    # Needs the PostgreSQL wake-up (a trigger's NOTIFY, the daemon's LISTEN):
    # the fallback poll alone would take up to 30 s.
    daemons = hosts(daemon_factory, tmp_path, pg_url, 2, poll_interval_seconds=SLOW_POLL)
    client = PgClient(pg_url)
    time.sleep(1.0)  # both have done their first pass and are waiting
    assert_serving(*daemons)

    begun = time.monotonic()
    run_id = client.submit({"sim": {"sleep": "forever"}})
    row = running_with_pid(client, run_id, PROMPT)
    took = time.monotonic() - begun

    assert took < PROMPT
    assert len(owners(daemons, run_id)) == 1
    assert alive(row["pid"])


@pytest.mark.timeout(90)
def test_a_cancel_reaches_the_owning_daemon_at_once(
    pg_url: str, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The runs are there before the daemons start, so they are claimed by the
    # start-up pass, whatever the wake-ups; the cancel has only its wake-up.
    first = daemon_factory(root=tmp_path / "w1", database_url=pg_url, worker_id="w1",
                           poll_interval_seconds=SLOW_POLL, max_concurrent_runs="1")
    first.start()  # creates the tables
    assert first.stop() == 0
    client = PgClient(pg_url)
    wait_until(lambda: client.other_sessions() == 0, PROMPT, "its sessions to end")
    ids = [client.submit({"sim": {"workers": 2, "sleep": "forever"}}) for _ in range(2)]
    first.start()
    second = daemon_factory(root=tmp_path / "w2", database_url=pg_url, worker_id="w2",
                            poll_interval_seconds=SLOW_POLL, max_concurrent_runs="1").start()
    daemons = [first, second]
    for run_id in ids:
        running_with_pid(client, run_id, PROMPT)
    assert [len(owners(daemons, run_id)) for run_id in ids] == [1, 1]
    target, other = ids
    (owner,) = owners(daemons, target)
    pids = wait_until(lambda: (p := pids_of_run(owner.run_dir(target))) and len(p) >= 3 and p,
                      PROMPT, "the run's three processes")
    time.sleep(0.5)  # every daemon idle again

    begun = time.monotonic()
    client.cancel(target)
    row = client.wait_final(target, timeout=PROMPT)
    took = time.monotonic() - begun

    assert row["status"] == "CANCELLED" and row["completed_at"] is not None
    assert took < PROMPT
    assert [pid for pid in [row["pid"], *pids] if alive(pid)] == []
    assert client.status(other) == "RUNNING"
    assert alive(client.row(other)["pid"])  # type: ignore[index]
    assert_serving(*daemons)


@pytest.mark.timeout(180)
def test_a_server_restart_loses_no_outcome_and_no_progress(
    pg_server: PgServer, pg_url: str, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    # Needs the daemon's outage handling: it keeps supervising while the
    # database is away and writes what happened meanwhile once it is back.
    (daemon,) = hosts(daemon_factory, tmp_path, pg_url, 1, max_concurrent_runs="4")
    client = PgClient(pg_url)
    release, marker = tmp_path / "release", tmp_path / "marker"
    first = {"erlang": 300.0, "iteration": 1, "total_iterations": 3}
    later = {"erlang": 400.0, "iteration": 2, "total_iterations": 3}

    def sim(**keys: Any) -> dict[str, Any]:
        return {"sim": {"until": str(release), "marker": str(marker),
                        "progress": json.dumps([first]), **keys}}

    finishing = client.submit(sim())
    failing = client.submit(sim(exit=3, stderr="ValueError: lost in the outage"))
    going_on = [client.submit(sim(after=json.dumps([later]), sleep="forever")) for _ in range(2)]
    ids = [finishing, failing, *going_on]
    for run_id in ids:
        wait_until(lambda run_id=run_id: (r := client.row(run_id)) and r["status"] == "RUNNING"
                   and r["current_iteration"] == 1, 15, f"run {run_id}'s first progress")
    run_dirs = {run_id: daemon.run_dir(run_id) for run_id in ids}

    def outage() -> None:
        release.touch()  # two runs end, two write their next progress: all while it is down
        for run_id in (finishing, failing):
            wait_until((run_dirs[run_id] / "exit.json").exists, 15, f"run {run_id} to end")
        for run_id in going_on:
            wait_until(lambda run_id=run_id: len(
                (run_dirs[run_id] / "progress.jsonl").read_text().splitlines()) == 2,
                15, f"run {run_id}'s second progress line")
        time.sleep(2.0)  # the outage goes on: the daemon meets it

    pg_server.restart(while_down=outage)

    assert_serving(daemon)
    row = client.wait_final(finishing, timeout=60)
    assert row["status"] == "COMPLETED"
    row = client.wait_final(failing, timeout=60)
    assert row["status"] == "FAILED" and row["error_message"].startswith("exit code 3")
    for run_id in going_on:
        row = wait_until(lambda run_id=run_id: (r := client.row(run_id))
                         and r["current_iteration"] == 2 and r, 60,
                         f"run {run_id}'s progress from the outage")
        assert (row["status"], row["current_erlang"]) == ("RUNNING", 400.0)
    assert sorted(marker.read_text().split()) == sorted(ids)  # nothing started twice
    # Cancels are honoured again.
    for run_id in going_on:
        client.cancel(run_id)
    for run_id in going_on:
        assert client.wait_final(run_id, timeout=30)["status"] == "CANCELLED"
    assert_serving(daemon)
    assert daemon.log_text().count("action=ready") == 1  # it never started over

# A second daemon of one worker id exits 2 on PostgreSQL too: test_worker_lock.py.
# Leases (SIGSTOP) and daemons starting together on an empty database: elsewhere.
