"""One live daemon per worker_id (SPEC §7): a second one exits 2 naming the first."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Client, Daemon, wait_until
from tests.pgserver import PgServer

EXIT_TIMEOUT = 10.0


def second_daemon(daemon_factory: Callable[..., Daemon], **settings: str) -> Daemon:
    daemon = daemon_factory(**settings)
    daemon.log_name = "daemon-second.log"
    return daemon


def exit_status(daemon: Daemon) -> int:
    process = daemon.process
    assert process is not None
    wait_until(lambda: process.poll() is not None, EXIT_TIMEOUT, "the daemon to exit")
    return process.returncode


def pid_of(daemon: Daemon) -> int:
    assert daemon.process is not None
    return daemon.process.pid


def forever_run(client: Client, marker: Path) -> str:
    """A run that never ends by itself; returns its id once its simulation has started."""
    run_id = client.submit({"sim": {"sleep": "forever", "marker": str(marker)}})
    wait_until(lambda: marker.exists() and run_id in marker.read_text(), 10, "the run to start")
    return run_id


def assert_refused_naming(second: Daemon, first: Daemon, worker_id: str = "test") -> None:
    assert exit_status(second) == 2
    log = second.log_text()
    assert f"another fusion-runner daemon (pid {pid_of(first)} on host " in log
    assert f"already serves worker_id '{worker_id}' on this database" in log
    assert "action=ready" not in log
    assert "Traceback" not in log


def test_second_daemon_of_a_worker_id_exits_2_and_the_first_keeps_serving(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemon_factory().start()
    client = Client(first.database)
    marker = tmp_path / "marker"
    run_id = forever_run(client, marker)

    second = second_daemon(daemon_factory).start(wait_ready=False)

    assert_refused_naming(second, first)
    assert "action=adopted" not in second.log_text()
    assert first.process is not None and first.process.poll() is None
    assert client.status(run_id) == "RUNNING"
    client.cancel(run_id)
    assert client.wait_final(run_id)["status"] == "CANCELLED"
    assert marker.read_text().split() == [run_id]


def test_a_killed_daemons_lock_is_free_though_its_runs_live_on(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemon_factory().start()
    client = Client(first.database)
    marker = tmp_path / "marker"
    run_id = forever_run(client, marker)
    assert first.process is not None
    first.process.kill()
    first.process.wait(EXIT_TIMEOUT)

    # The run's processes outlive the daemon: had they inherited its lock
    # file, this daemon could not start.
    second = second_daemon(daemon_factory).start()

    wait_until(lambda: f"run={run_id} action=adopted" in second.log_text(), 10, "the adoption")
    client.cancel(run_id)
    assert client.wait_final(run_id)["status"] == "CANCELLED"
    assert marker.read_text().split() == [run_id]


def test_another_worker_id_on_the_same_database_starts_beside_the_first(
    daemon_factory: Callable[..., Daemon],
) -> None:
    first = daemon_factory().start()
    other = daemon_factory(worker_id="other").start()

    assert first.process is not None and first.process.poll() is None
    assert other.process is not None and other.process.poll() is None
    assert len(list(first.root.glob("runs.db.worker-*.lock"))) == 2


# --- PostgreSQL ------------------------------------------------------------------


def own_lock_sessions(server: PgServer, url: str) -> int:
    import psycopg

    database = url.rsplit("/", 1)[1]
    conninfo = f"host=127.0.0.1 port={server.port} user={server.user} dbname={database}"
    with psycopg.connect(conninfo, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres
def test_postgres_second_daemon_of_a_worker_id_exits_2_naming_the_first(
    daemon_factory: Callable[..., Daemon], pg_server: PgServer, pg_url: str
) -> None:
    first = daemon_factory(database_url=pg_url).start()
    second = second_daemon(daemon_factory, database_url=pg_url).start(wait_ready=False)

    assert_refused_naming(second, first)
    assert first.process is not None and first.process.poll() is None

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(EXIT_TIMEOUT)
    # The server ends the dead daemon's session, and its lock, on its own.
    wait_until(lambda: own_lock_sessions(pg_server, pg_url) == 0, 10, "the lock's release")
    second.start()
    assert second.process is not None and second.process.poll() is None
