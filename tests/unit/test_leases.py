"""Workers and leases: the store's verbs on real SQLite files and the real PostgreSQL
server, and the lease in `Supervisor.step()` with the fake executor and clock."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from fusion_runner.core.clock import utcnow
from fusion_runner.core.config import Config
from fusion_runner.core.schema import workers
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store
from fusion_runner.core.workerverbs import Registration, lost_message
from fusion_runner.daemon.supervisor import Supervisor
from tests.fakes import FakeClock, FakeExecutor, FakeWakeups

LEASE = 4.0
ME, OTHER, THIRD, FOURTH = "me", "other", "third", "fourth"
RUN, SECOND, THIRD_RUN = "0123456789ab", "0123456789ac", "0123456789ad"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    store = Store.open(url)
    yield store
    store.close()


def registration(worker_id: str, host: str = "host-a") -> Registration:
    return Registration(worker_id, host, "boot", 1234, "0.1.0", utcnow())


def set_heartbeat(store: Store, worker_id: str, moment: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(workers).where(workers.c.worker_id == worker_id)
                     .values(heartbeat_at=moment))


def claimed_by(store: Store, worker_id: str, run_id: str) -> None:
    """A RUNNING run of `worker_id` with a recorded process."""
    store.insert_run(run_id, name="x", config_json='{"sim": {}}', template="t.ini")
    claimed = store.claim_next(worker_id)
    assert claimed is not None and claimed.id == run_id
    assert store.mark_started(run_id, pid=4242, pgid=4242, process_start_ticks=1, boot_id="b",
                              process_start_time=None, run_dir=Path("/nonexistent") / run_id)


def row_of(store: Store, run_id: str) -> tuple[object, ...]:
    row = store.get_run(run_id)
    assert row is not None
    return tuple(row)


# --- the store's verbs ---------------------------------------------------------------


def test_register_heartbeat_and_a_clean_stop(store: Store) -> None:
    assert store.list_workers() == []
    assert store.register_worker(registration(ME), running=0) is None
    first = store.worker(ME)
    assert first is not None and first.host == "host-a" and first.running == 0

    assert store.heartbeat(ME, running=3)
    beat = store.worker(ME)
    assert beat is not None and beat.running == 3 and beat.heartbeat_at >= first.heartbeat_at

    store.worker_stopped(ME)
    stopped = store.worker(ME)
    assert stopped is not None and stopped.stopped_at is not None

    before = store.register_worker(registration(ME, host="host-b"))  # a restart
    assert before is not None and before.stopped_at is not None
    again = store.worker(ME)
    assert again is not None and again.stopped_at is None and again.host == "host-b"
    assert [row.worker_id for row in store.list_workers() or []] == [ME]


def test_a_worker_past_its_lease_is_declared_lost_and_its_running_runs_failed(
    store: Store,
) -> None:
    for worker_id in (ME, OTHER, THIRD, FOURTH):
        store.register_worker(registration(worker_id))
    claimed_by(store, OTHER, RUN)
    claimed_by(store, OTHER, SECOND)
    claimed_by(store, THIRD, THIRD_RUN)
    assert store.transition(SECOND, RunStatus.RUNNING, RunStatus.COMPLETED, completed_at=utcnow())
    completed_before = row_of(store, SECOND)
    stale = utcnow() - timedelta(seconds=LEASE + 1)
    set_heartbeat(store, OTHER, stale)
    # Stopped cleanly, leaving a run RUNNING (on_shutdown = "detach"): lost all the same.
    store.worker_stopped(THIRD)
    set_heartbeat(store, THIRD, stale)
    # Stopped cleanly with nothing left running: never lost, however old its heartbeat.
    store.worker_stopped(FOURTH)
    set_heartbeat(store, FOURTH, stale)
    now = utcnow()

    declared = store.declare_lost_workers(ME, now, LEASE)

    assert [(lost.worker_id, lost.runs, lost.lost_at) for lost in declared] == [
        (OTHER, [RUN], now), (THIRD, [THIRD_RUN], now)]
    failed = store.get_run(RUN)
    assert failed is not None and failed.status == RunStatus.FAILED
    assert failed.error_message == lost_message(OTHER, "host-a", declared[0].heartbeat_at)
    assert re.fullmatch(r"worker other on host-a lost \(no heartbeat since "
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", failed.error_message)
    assert failed.completed_at == now
    assert row_of(store, SECOND) == completed_before  # ended before: kept as it was
    assert store.get_run(THIRD_RUN).status == RunStatus.FAILED  # type: ignore[union-attr]
    lost = store.worker(OTHER)
    assert lost is not None and lost.lost_at == now and lost.running == 0
    fourth = store.worker(FOURTH)
    assert fourth is not None and fourth.lost_at is None
    # Once only: a second look finds nothing more to declare.
    assert store.declare_lost_workers(ME, utcnow(), LEASE) == []
    assert store.declare_lost_workers(THIRD, utcnow(), LEASE) == []


def test_a_worker_never_declares_itself_lost(store: Store) -> None:
    store.register_worker(registration(ME))
    set_heartbeat(store, ME, utcnow() - timedelta(seconds=LEASE * 10))

    assert store.declare_lost_workers(ME, utcnow(), LEASE) == []


def test_a_heartbeat_between_the_look_and_the_declaration_wins(store: Store) -> None:
    store.register_worker(registration(OTHER))
    claimed_by(store, OTHER, RUN)
    old = utcnow() - timedelta(seconds=LEASE + 1)
    set_heartbeat(store, OTHER, old)
    store.heartbeat(OTHER, running=1)  # after the declaring daemon read `old`

    assert store._declare_lost(OTHER, "host-a", old, utcnow()) is None

    assert store.get_run(RUN).status == RunStatus.RUNNING  # type: ignore[union-attr]
    assert store.worker(OTHER).lost_at is None  # type: ignore[union-attr]


def test_daemons_declaring_at_once_fail_each_run_once(store: Store, url: str) -> None:
    store.register_worker(registration(OTHER))
    claimed_by(store, OTHER, RUN)
    set_heartbeat(store, OTHER, utcnow() - timedelta(seconds=LEASE + 1))
    declarers = [Store.open(url) for _ in range(4)]
    start = threading.Barrier(len(declarers))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def declare(declarer: Store, me: str) -> None:
        start.wait()
        try:
            results.append([lost.worker_id for lost in
                            declarer.declare_lost_workers(me, utcnow(), LEASE)])
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=declare, args=(declarer, f"d{n}"))
               for n, declarer in enumerate(declarers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for declarer in declarers:
        declarer.close()

    assert errors == []
    assert sorted(results) == [[], [], [], [OTHER]]
    assert store.get_run(RUN).status == RunStatus.FAILED  # type: ignore[union-attr]


def test_a_lost_worker_finds_out_registers_again_and_its_failed_runs_are_listed_until_then(
    store: Store,
) -> None:
    store.register_worker(registration(ME))
    claimed_by(store, ME, RUN)
    set_heartbeat(store, ME, utcnow() - timedelta(seconds=LEASE + 1))
    [declared] = store.declare_lost_workers(OTHER, utcnow(), LEASE)

    assert not store.heartbeat(ME, running=1)
    assert [owned.id for owned in store.runs_failed_as_lost(ME)] == [RUN]
    assert store.runs_failed_as_lost(OTHER) == []
    before = store.register_worker(registration(ME), running=1)

    assert before is not None and before.lost_at == declared.lost_at
    assert store.worker(ME).lost_at is None  # type: ignore[union-attr]
    assert store.heartbeat(ME, running=1)
    assert store.runs_failed_as_lost(ME) == []


def test_clients_read_no_workers_and_no_worker_where_no_daemon_made_the_tables(
    tmp_path: Path,
) -> None:
    from fusion_runner.core import clientdb
    from tests.legacy_schema import RUNS_TABLE

    database = tmp_path / "gui.db"
    with sqlite3.connect(database) as connection:
        connection.execute(RUNS_TABLE)
    connection.close()
    client = clientdb.open_existing(f"sqlite:///{database}")
    try:
        assert client.list_workers() is None
        assert client.worker_of(RUN) is None
    finally:
        client.close()


# --- the lease in the loop -----------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(database_url=f"sqlite:///{tmp_path / 'runs.db'}", runs_dir=tmp_path / "runs",
                  worker_id=ME, stop_grace_seconds=5.0, sim_command=("true",),
                  lease_timeout_seconds=LEASE)


@pytest.fixture
def sqlite_store(config: Config) -> Iterator[Store]:
    store = Store.open(config.database_url)
    yield store
    store.close()


def supervisor(config: Config, store: Store, executor: FakeExecutor) -> Supervisor:
    return Supervisor(config, store, executor, FakeWakeups(), FakeClock())


def heartbeat_at(store: Store, worker_id: str = ME) -> datetime:
    row = store.worker(worker_id)
    assert row is not None
    return row.heartbeat_at  # type: ignore[no-any-return]


def test_the_loop_heartbeats_when_due_and_wakes_in_time_for_the_next(
    config: Config, sqlite_store: Store
) -> None:
    daemon = supervisor(config, sqlite_store, FakeExecutor())
    daemon.step(0.0)
    assert sqlite_store.list_workers() == []  # not before run() registers it

    daemon._lease.start(0.0, running=0)
    registered = heartbeat_at(sqlite_store)
    interval = LEASE / 4

    daemon.step(interval / 2)
    assert heartbeat_at(sqlite_store) == registered
    assert daemon._next_deadline is not None and daemon._next_deadline <= interval

    sqlite_store.insert_run(RUN, name="x", config_json='{"sim": {}}', template="t.ini")
    daemon.step(interval)
    row = sqlite_store.worker(ME)
    assert row is not None and row.heartbeat_at > registered and row.running == 1
    assert daemon._next_deadline is not None and daemon._next_deadline <= 2 * interval


def test_a_daemon_back_after_its_lease_expired_stops_its_failed_runs_and_leaves_the_rows(
    config: Config, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    executor = FakeExecutor()
    daemon = supervisor(config, sqlite_store, executor)
    daemon._lease.start(0.0, running=0)
    sqlite_store.insert_run(RUN, name="x", config_json='{"sim": {}}', template="t.ini")
    daemon.step(0.1)
    run = executor.run_of(RUN)
    # Frozen past the lease: another daemon declares it lost.
    set_heartbeat(sqlite_store, ME, utcnow() - timedelta(seconds=LEASE + 1))
    other = Store.open(config.database_url)
    try:
        [declared] = other.declare_lost_workers(OTHER, utcnow(), LEASE)
    finally:
        other.close()
    assert declared.runs == [RUN]
    failed = row_of(sqlite_store, RUN)

    with caplog.at_level(logging.INFO, logger="fusion_runner"):
        daemon.step(LEASE)  # its next heartbeat is due
        daemon.step(LEASE + 0.1)

    assert run.signals == ["TERM"] and not run.alive
    assert daemon.live == {}
    assert row_of(sqlite_store, RUN) == failed
    assert sum("action=lease_expired worker=me" in line for line in caplog.messages) == 1
    assert sqlite_store.worker(ME).lost_at is None  # type: ignore[union-attr]


def test_a_daemon_restarted_after_its_lease_expired_stops_the_runs_failed_meanwhile(
    config: Config, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    executor = FakeExecutor()
    sqlite_store.register_worker(registration(ME))
    sqlite_store.insert_run(RUN, name="x", config_json='{"sim": {}}', template="t.ini")
    assert sqlite_store.claim_next(ME) is not None
    left = executor.earlier_daemon_spawned(RUN)  # its processes outlived the daemon
    sqlite_store.mark_started(RUN, pid=left.pid, pgid=left.pgid, process_start_ticks=1,
                              boot_id="boot", process_start_time=None,
                              run_dir=config.runs_dir / RUN)
    set_heartbeat(sqlite_store, ME, utcnow() - timedelta(seconds=LEASE + 1))
    assert sqlite_store.declare_lost_workers(OTHER, utcnow(), LEASE)[0].runs == [RUN]
    failed = row_of(sqlite_store, RUN)
    daemon = supervisor(config, sqlite_store, executor)

    with caplog.at_level(logging.INFO, logger="fusion_runner"):
        daemon._reconcile_until_done(FakeWakeups())
        daemon._lease.start(0.0, running=0)
        daemon.step(0.1)

    assert left.signals == ["TERM"] and not left.alive
    assert daemon.live == {}
    assert row_of(sqlite_store, RUN) == failed
    assert any("action=lease_expired worker=me" in line for line in caplog.messages)
    assert sqlite_store.runs_failed_as_lost(ME) == []
