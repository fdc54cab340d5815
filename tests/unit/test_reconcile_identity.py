"""Reconcile after a restart decides from the kernel and the start ticks, refuses to
guess about a process it cannot inspect, and reads an earlier version's claims table.

A real SQLite file and real processes; the /proc root is pointed at an empty
folder to hide a live process, as systemd's ProtectProc=invisible does.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from fusion_runner.core import clientdb
from fusion_runner.core.config import Config, sqlalchemy_url
from fusion_runner.core.errors import CannotInspect
from fusion_runner.core.rundir import RunPaths
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store
from fusion_runner.daemon.supervisor import Supervisor
from fusion_runner.executors import procfs
from fusion_runner.executors.local import Identity, LocalExecutor
from tests.legacy_schema import LEGACY_CLAIMS_TABLE, RUNS_TABLE, columns, create_legacy_database

WORKER = "unit"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(database_url=f"sqlite:///{tmp_path / 'runs.db'}", runs_dir=tmp_path / "runs",
                  worker_id=WORKER)


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    store = Store.open(config.database_url)
    yield store
    store.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    yield child
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)


@pytest.fixture
def hidden_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proc"
    root.mkdir()
    monkeypatch.setattr(procfs, "PROC_ROOT", root)


def claimed(store: Store, run_id: str) -> None:
    store.insert_run(run_id, name=None, config_json='{"sim": {}}', template="t")
    claim = store.claim_next(WORKER)
    assert claim is not None and claim.id == run_id


def started(store: Store, config: Config, run_id: str, shim: Identity) -> None:
    claimed(store, run_id)
    assert shim.start_ticks is not None
    store.mark_started(run_id, pid=shim.pid, pgid=shim.pid, process_start_ticks=shim.start_ticks,
                       boot_id=shim.boot_id, process_start_time=shim.start_time,
                       run_dir=config.runs_dir / run_id)


def row(store: Store, run_id: str) -> tuple[str, object]:
    found = store.get_run(run_id)
    assert found is not None
    return found.status, found.completed_at


def test_a_live_run_hidden_from_proc_is_refused_and_stays_running(
    store: Store, config: Config, sleeper: subprocess.Popen[bytes], hidden_proc: None,
) -> None:
    with pytest.MonkeyPatch.context() as visible:
        visible.setattr(procfs, "PROC_ROOT", Path("/proc"))
        started(store, config, "0000000000a1", Identity.read(sleeper.pid))
    supervisor = Supervisor(config, store, LocalExecutor.from_config(config, subreaper=False))

    with pytest.raises(CannotInspect) as refused:
        supervisor.reconcile(0.0)

    assert str(refused.value) == (
        f"run 0000000000a1: process {sleeper.pid} exists but cannot be inspected "
        f"({procfs.PROC_ROOT}/{sleeper.pid} is hidden: a sandbox such as systemd's "
        f"ProtectProc=invisible with PrivateUsers=yes hides processes of an earlier start); "
        f"refusing to start, the run stays RUNNING for a daemon that can see it")
    assert row(store, "0000000000a1") == (RunStatus.RUNNING, None)
    assert supervisor.live == {} and sleeper.poll() is None


def test_a_refusal_leaves_every_other_run_untouched(
    store: Store, config: Config, sleeper: subprocess.Popen[bytes], hidden_proc: None,
) -> None:
    claimed(store, "0000000000a2")  # claimed, never spawned: would be requeued
    with pytest.MonkeyPatch.context() as visible:
        visible.setattr(procfs, "PROC_ROOT", Path("/proc"))
        started(store, config, "0000000000a3", Identity.read(sleeper.pid))

    with pytest.raises(CannotInspect):
        Supervisor(config, store, LocalExecutor.from_config(config, subreaper=False)).reconcile(0.0)

    assert row(store, "0000000000a2") == (RunStatus.RUNNING, None)


def test_a_run_whose_process_ended_is_not_refused_however_proc_hides_it(
    store: Store, config: Config, hidden_proc: None,
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    with pytest.MonkeyPatch.context() as visible:
        visible.setattr(procfs, "PROC_ROOT", Path("/proc"))
        shim = Identity.read(child.pid)
    child.wait(10)
    started(store, config, "0000000000a4", shim)
    supervisor = Supervisor(config, store, LocalExecutor.from_config(config, subreaper=False))

    supervisor.reconcile(0.0)

    run = supervisor.live["0000000000a4"]
    assert run.exited and run.process.owns_group


def test_a_row_of_an_earlier_version_is_adopted_and_given_its_start_ticks(
    store: Store, config: Config, sleeper: subprocess.Popen[bytes],
) -> None:
    shim = Identity.read(sleeper.pid)
    claimed(store, "0000000000a5")
    store.mark_started("0000000000a5", pid=shim.pid, pgid=shim.pid, process_start_ticks=None,
                       boot_id=None, process_start_time=shim.start_time,
                       run_dir=config.runs_dir / "0000000000a5")
    supervisor = Supervisor(config, store, LocalExecutor.from_config(config, subreaper=False))

    supervisor.reconcile(0.0)

    adopted = supervisor.live["0000000000a5"]
    assert not adopted.exited
    assert adopted.process.shim.start_ticks == shim.start_ticks
    assert adopted.process.shim.boot_id == procfs.boot_id()
    [owned] = store.owned_unfinished(WORKER)
    assert (owned.process_start_ticks, owned.boot_id) == (shim.start_ticks, procfs.boot_id())


def test_an_unrecorded_spawn_is_refused_when_proc_may_hide_its_shim(
    store: Store, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    claimed(store, "0000000000a6")
    paths = RunPaths.under(config.runs_dir, "0000000000a6")
    paths.run_dir.mkdir(parents=True)
    paths.spawn_marker.touch()  # the spawn may have happened
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("98 80 0:50 / /proc rw,relatime - proc proc rw,hidepid=invisible\n")
    monkeypatch.setattr(procfs, "MOUNTINFO_FILE", mountinfo)

    with pytest.raises(CannotInspect) as refused:
        Supervisor(config, store, LocalExecutor.from_config(config, subreaper=False)).reconcile(0.0)

    assert "its start was never recorded and no process of it is visible" in str(refused.value)
    assert "hidepid=invisible" in str(refused.value)
    assert row(store, "0000000000a6") == (RunStatus.RUNNING, None)

    paths.exit_record.write_text("{}")  # its shim has ended: nothing can be hidden
    Supervisor(config, store, LocalExecutor.from_config(config, subreaper=False)).reconcile(0.0)
    assert row(store, "0000000000a6")[0] == RunStatus.FAILED


# --- the claims table of an earlier version ----------------------------------------------


def legacy_database(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        create_legacy_database(connection)
    connection.close()
    return f"sqlite:///{path}"


def test_missing_claim_columns_are_added_and_the_runs_table_is_left_alone(
    tmp_path: Path,
) -> None:
    url = legacy_database(tmp_path / "legacy.db")
    with sqlite3.connect(tmp_path / "legacy.db") as connection:
        runs_before = columns(connection, "runs")
    connection.close()

    for _ in range(2):  # the second open finds nothing to add
        Store.open(url).close()

    with sqlite3.connect(tmp_path / "legacy.db") as connection:
        claims = columns(connection, "fusion_runner_claims")
        assert claims[-8:] == ["process_start_ticks", "boot_id", "log_offset", "queued_at",
                               "job_id", "node", "queue_reason", "stalled_at"]
        assert columns(connection, "runs") == runs_before
    connection.close()


def test_the_client_commands_leave_an_earlier_versions_claims_table_as_it_is(
    tmp_path: Path,
) -> None:
    url = legacy_database(tmp_path / "legacy.db")

    store = clientdb.open_existing(url)  # how the client commands open a database
    assert store.recorded_run_dir("0000000000a7") is None
    store.close()

    with sqlite3.connect(tmp_path / "legacy.db") as connection:
        assert not {"process_start_ticks", "boot_id", "log_offset"} & set(
            columns(connection, "fusion_runner_claims"))
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "fusion_runner_outputs" not in tables
    connection.close()


def open_twice_at_once(url: str) -> list[BaseException]:
    """Two stores opening `url` at the same moment; what either raised."""
    both = threading.Barrier(2)
    errors: list[BaseException] = []

    def open_store() -> None:
        both.wait()
        try:
            Store.open(url).close()
        except BaseException as error:  # reported by the caller
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_two_processes_adding_the_columns_at_once_both_open_the_database(
    tmp_path: Path,
) -> None:
    for attempt in range(5):
        url = legacy_database(tmp_path / f"legacy{attempt}.db")
        assert open_twice_at_once(url) == [], f"attempt {attempt}"


@pytest.mark.postgres
def test_postgres_claims_table_of_an_earlier_version_gets_its_columns(pg_url: str) -> None:
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.begin() as conn:
        for table in (RUNS_TABLE, LEGACY_CLAIMS_TABLE):
            conn.execute(text(table.replace("DATETIME", "TIMESTAMP WITHOUT TIME ZONE")))

    assert open_twice_at_once(pg_url) == []

    added = {column["name"]: column["type"]
             for column in inspect(engine).get_columns("fusion_runner_claims")}
    engine.dispose()
    assert str(added["process_start_ticks"]) == "BIGINT"
    assert str(added["boot_id"]) == "VARCHAR(36)"
