"""Workers and leases (SPEC §7), with real daemons: each registers and heartbeats,
says so when it stops cleanly, and `fusion-runner workers` shows it; a daemon
stopped past its lease has its RUNNING runs failed by another, exactly once, and
when it comes back it stops their processes and leaves the rows; daemons
starting together on an empty database all become ready.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.clients import PgClient
from tests.conftest import Client, Daemon, alive, pids_of_run, wait_until
from tests.legacy_schema import RUNS_TABLE

LEASE = "2"  # short, yet four heartbeats long: a busy machine does not lose a live daemon
# From a daemon's last heartbeat to its runs FAILED: the lease, a watcher's next
# heartbeat, and room for a slow machine.
LOST_TIMEOUT = float(LEASE) + 10.0
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    env |= {"FUSION_RUNNER_DATABASE_URL": url, "FUSION_RUNNER_LEASE_TIMEOUT_SECONDS": LEASE}
    return subprocess.run([sys.executable, "-m", "fusion_runner", *args], env=env,
                          capture_output=True, text=True, timeout=30)


def workers(url: str) -> dict[str, dict[str, Any]]:
    """`fusion-runner workers --json`, by worker id."""
    result = cli(url, "workers", "--json")
    assert result.returncode == 0, result.stderr
    return {worker["worker_id"]: worker for worker in json.loads(result.stdout)}


def heartbeat(url: str, worker_id: str) -> datetime:
    return datetime.fromisoformat(workers(url)[worker_id]["heartbeat_at"])


def forever_run(client: Client, tmp_path: Path, **sim: str) -> str:
    marker = tmp_path / f"marker-{os.urandom(3).hex()}"
    run_id = client.submit({"sim": {"sleep": "forever", "marker": str(marker)} | sim})
    wait_until(lambda: marker.exists(), 10, "the run's simulation to start")
    wait_until(lambda: (row := client.row(run_id)) is not None and row["pid"] is not None,
               10, "the run's pid to be recorded")
    return run_id


def pid_of(daemon: Daemon) -> int:
    assert daemon.process is not None
    return daemon.process.pid


# --- registration, heartbeats, a clean stop ---------------------------------------------


@pytest.mark.usefixtures("backend")
def test_a_daemon_registers_heartbeats_and_says_when_it_stopped(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(lease_timeout_seconds=LEASE).start()
    client = daemon.client()
    run_id = forever_run(client, tmp_path)

    me = wait_until(lambda: (found := workers(daemon.url).get("test")) and found["running"] == 1
                    and found, 10, "a heartbeat with the running run")
    assert me["alive"] is True and me["state"] == "alive"
    assert (me["host"], me["pid"]) == (socket.gethostname(), pid_of(daemon))
    assert me["stopped_at"] is None and me["lost_at"] is None
    first = datetime.fromisoformat(me["heartbeat_at"])
    wait_until(lambda: heartbeat(daemon.url, "test") > first, 10, "the next heartbeat")
    listing = cli(daemon.url, "workers")
    assert listing.returncode == 0
    assert re.search(rf"^test\s+{re.escape(socket.gethostname())}\s+{pid_of(daemon)}\s+alive\s",
                     listing.stdout, re.MULTILINE), listing.stdout
    assert "1 of 1 alive" in listing.stdout
    shown = cli(daemon.url, "show", run_id, "--json")
    assert json.loads(shown.stdout)["worker_id"] == "test"
    assert re.search(r"^worker\s+test$", cli(daemon.url, "show", run_id).stdout, re.MULTILINE)

    client.cancel(run_id)
    client.wait_final(run_id)
    assert daemon.stop() == 0

    stopped = workers(daemon.url)["test"]
    assert stopped["alive"] is False and stopped["state"] == "stopped"
    assert stopped["stopped_at"] is not None and stopped["lost_at"] is None
    listing = cli(daemon.url, "workers")
    assert "no daemon is alive" in listing.stdout
    assert re.search(r"^test\s.*\sstopped\s", listing.stdout, re.MULTILINE), listing.stdout


def test_workers_on_a_database_no_daemon_has_served(tmp_path: Path) -> None:
    database = tmp_path / "gui.db"
    with sqlite3.connect(database) as connection:  # as the GUI makes it
        connection.execute(RUNS_TABLE)
    connection.close()
    run_id = Client(database).submit()
    url = f"sqlite:///{database}"

    listing = cli(url, "workers")
    as_json = cli(url, "workers", "--json")
    shown = cli(url, "show", run_id, "--json")

    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout.startswith("no daemon has registered yet")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    assert shown.returncode == 0 and json.loads(shown.stdout)["worker_id"] is None


# --- leases: a daemon lost and back ----------------------------------------------------


def worker_row(client: PgClient, worker_id: str) -> dict[str, Any]:
    with client.connect() as connection:
        row = connection.execute("SELECT * FROM fusion_runner_workers WHERE worker_id = %s",
                                 (worker_id,)).fetchone()
    assert row is not None
    return row


def claimed_by(client: PgClient, run_id: str) -> str | None:
    with client.connect() as connection:
        row = connection.execute("SELECT worker_id FROM fusion_runner_claims WHERE run_id = %s",
                                 (run_id,)).fetchone()
    return None if row is None else str(row["worker_id"])


def declarations(daemons: list[Daemon], worker_id: str) -> int:
    return sum(daemon.log_text().count(f"action=worker_lost worker={worker_id} ")
               for daemon in daemons)


def beat_twice_since(client: PgClient, worker_id: str, moment: datetime) -> None:
    """Wait until `worker_id` has begun two heartbeats after `moment`: the first one's
    look for lost workers has then ended."""
    after = wait_until(lambda: (beat := worker_row(client, worker_id)["heartbeat_at"]) > moment
                       and beat, 10, f"a heartbeat of {worker_id}")
    wait_until(lambda: worker_row(client, worker_id)["heartbeat_at"] > after, 10,
               f"the next heartbeat of {worker_id}")


@pytest.mark.postgres
def test_postgres_a_daemon_stopped_past_its_lease_loses_its_runs_once_and_stops_them_when_back(
    pg_url: str, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    # pg_url first: the database outlives the daemons, which daemon_factory stops.
    settings = {"database_url": pg_url, "lease_timeout_seconds": LEASE}
    lost = daemon_factory(worker_id="alpha", **settings).start()
    client = PgClient(pg_url)
    run_id = forever_run(client, tmp_path, workers="2")
    pids = wait_until(lambda: len(found := pids_of_run(lost.run_dir(run_id))) >= 3 and found,
                      10, "the run's three processes")
    assert claimed_by(client, run_id) == "alpha"
    watchers = [daemon_factory(worker_id=name, **settings).start() for name in ("beta", "gamma")]

    os.kill(pid_of(lost), signal.SIGSTOP)
    try:
        failed = client.wait_status(run_id, "FAILED", timeout=LOST_TIMEOUT)
        lost_at = worker_row(client, "alpha")["lost_at"]
        assert lost_at is not None
        for watcher in ("beta", "gamma"):
            beat_twice_since(client, watcher, lost_at)
        as_failed = client.row(run_id)
        alpha = workers(pg_url)["alpha"]
        still_running = [pid for pid in pids if alive(pid)]
    finally:
        os.kill(pid_of(lost), signal.SIGCONT)

    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"worker alpha on {host} lost \(no heartbeat since {ISO_UTC}\)",
                        failed["error_message"]), failed["error_message"]
    assert failed["completed_at"] == lost_at
    assert declarations(watchers, "alpha") == 1
    assert f"runs={run_id} " in "".join(watcher.log_text() for watcher in watchers)
    assert as_failed == failed
    assert (alpha["alive"], alpha["state"]) == (False, "lost")
    assert still_running == pids  # another host's processes: only their daemon stops them

    # Back: it stops the run's whole tree, leaves the row, and goes on serving.
    wait_until(lambda: not any(alive(pid) for pid in pids), 15, "the run's processes to end")
    wait_until(lambda: "action=lease_expired worker=alpha" in lost.log_text(), 10,
               "the lost daemon to say its lease expired")
    wait_until(lambda: workers(pg_url)["alpha"]["alive"], 10, "the daemon to register again")
    assert f"run={run_id} action=stopping reason=client_status status='FAILED'" in lost.log_text()
    back = wait_until(lambda: (row := worker_row(client, "alpha"))["running"] == 0 and row,
                      10, "a heartbeat without the run")
    assert back["lost_at"] is None
    assert client.row(run_id) == failed
    assert declarations(watchers, "alpha") == 1
    for watcher in watchers:
        assert watcher.stop() == 0
    served = client.submit({"sim": {}})
    assert client.wait_final(served)["status"] == "COMPLETED"
    assert claimed_by(client, served) == "alpha"
    assert lost.process is not None and lost.process.poll() is None
    assert lost.stop() == 0
    assert worker_row(client, "alpha")["stopped_at"] is not None


# --- starting together ----------------------------------------------------------------------


@pytest.mark.usefixtures("backend")
def test_daemons_starting_together_on_an_empty_database_all_become_ready(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemons = [daemon_factory(worker_id=name, lease_timeout_seconds=LEASE)
               for name in ("one", "two", "three")]
    assert not daemons[0].database.exists() or daemons[0].is_postgres

    for daemon in daemons:
        daemon.start(wait_ready=False)
    for daemon in daemons:
        wait_until(lambda daemon=daemon: "action=ready" in daemon.log_text(), 20,
                   f"daemon {daemon.settings['worker-id']} to be ready")

    for daemon in daemons:
        assert daemon.process is not None and daemon.process.poll() is None
        assert "Traceback" not in daemon.log_text()
    found = wait_until(lambda: (seen := workers(daemons[0].url)) and len(seen) == 3 and seen,
                       10, "three registered workers")
    assert all(worker["alive"] for worker in found.values())
