"""The daemon's tables carry a version: made at the latest on an empty database,
upgraded step by step from every earlier shape, placed by what it has when it
predates the version table, and made by two processes at once without a failure.

Real SQLite files and the session's real PostgreSQL server.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from fusion_runner.core import schema
from fusion_runner.core.config import sqlalchemy_url
from fusion_runner.core.errors import SchemaError
from fusion_runner.core.store import Store
from tests.legacy_schema import RUNS_TABLE, columns, create_legacy_database

DAEMON_TABLES = {"fusion_runner_claims", "fusion_runner_outputs", "fusion_runner_workers",
                 "fusion_runner_results", "fusion_runner_events", "fusion_runner_meta",
                 "fusion_runner_schema"}
# The claims table as version 2 had it: identity columns, no log_offset.
V2_CLAIMS_COLUMNS = ["run_id", "worker_id", "claimed_at", "pid", "pgid", "process_start_time",
                     "run_dir", "progress_offset", "process_start_ticks", "boot_id"]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        found = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    connection.close()
    return found


def stored_version(path: Path) -> list[int]:
    with sqlite3.connect(path) as connection:
        found = [row[0] for row in connection.execute("SELECT version FROM fusion_runner_schema")]
    connection.close()
    return found


def make(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def open_store(url: str) -> None:
    Store.open(url).close()


def test_the_steps_are_in_order_and_end_at_the_latest_version() -> None:
    versions = [step.version for step in schema.STEPS]
    assert versions == list(range(2, 2 + len(versions)))
    assert schema.LATEST_VERSION == versions[-1] == 6


def test_an_empty_database_gets_every_table_at_the_latest_version(tmp_path: Path) -> None:
    database = tmp_path / "new.db"
    open_store(sqlite_url(database))

    assert tables(database) == DAEMON_TABLES | {"runs"}
    assert stored_version(database) == [schema.LATEST_VERSION]
    open_store(sqlite_url(database))  # again: nothing to do, one row still
    assert stored_version(database) == [schema.LATEST_VERSION]


def test_a_first_release_database_is_upgraded_step_by_step_keeping_its_rows(
    tmp_path: Path,
) -> None:
    database = tmp_path / "v1.db"
    with sqlite3.connect(database) as connection:
        create_legacy_database(connection)
        connection.execute("INSERT INTO fusion_runner_claims (run_id, worker_id, claimed_at, pid) "
                           "VALUES ('0123456789ab', 'old', '2024-01-01 00:00:00.000000', 42)")
        runs_before = columns(connection, "runs")
    connection.close()
    assert detect(database) == 1

    open_store(sqlite_url(database))

    assert tables(database) == DAEMON_TABLES | {"runs"}
    assert stored_version(database) == [schema.LATEST_VERSION]
    with sqlite3.connect(database) as connection:
        assert columns(connection, "fusion_runner_claims")[-8:] == [
            "process_start_ticks", "boot_id", "log_offset", "queued_at", "job_id", "node",
            "queue_reason", "stalled_at"]
        assert columns(connection, "runs") == runs_before  # never altered
        kept = connection.execute("SELECT run_id, worker_id, pid, log_offset "
                                  "FROM fusion_runner_claims").fetchall()
    connection.close()
    assert kept == [("0123456789ab", "old", 42, None)]


def detect(path: Path) -> int:
    engine = create_engine(sqlite_url(path))
    try:
        with engine.connect() as conn:
            return schema.detect_version(conn)
    finally:
        engine.dispose()


def test_a_database_without_the_version_table_is_placed_by_what_it_has(tmp_path: Path) -> None:
    v2_claims = ("CREATE TABLE fusion_runner_claims (run_id VARCHAR(12) PRIMARY KEY, "
                 "worker_id VARCHAR(255) NOT NULL, claimed_at DATETIME NOT NULL, pid INTEGER, "
                 "pgid INTEGER, process_start_time FLOAT, run_dir TEXT, progress_offset INTEGER, "
                 "process_start_ticks BIGINT, boot_id VARCHAR(36))")
    make(tmp_path / "gui.db", RUNS_TABLE)  # made by the GUI: none of the daemon's tables
    make(tmp_path / "v2.db", RUNS_TABLE, v2_claims)
    make(tmp_path / "v3.db", RUNS_TABLE, v2_claims,
         "ALTER TABLE fusion_runner_claims ADD COLUMN log_offset BIGINT",
         "CREATE TABLE fusion_runner_outputs (run_id VARCHAR(12), path TEXT, "
         "first_seen DATETIME NOT NULL, PRIMARY KEY (run_id, path))")
    # Half of version 3's step done (log_offset, no outputs table) is still version 2.
    make(tmp_path / "half.db", RUNS_TABLE, v2_claims,
         "ALTER TABLE fusion_runner_claims ADD COLUMN log_offset BIGINT")

    assert [detect(tmp_path / f"{name}.db") for name in ("gui", "v2", "v3", "half")] == [0, 2, 3, 2]
    for name in ("gui", "v2", "v3", "half"):
        database = tmp_path / f"{name}.db"
        open_store(sqlite_url(database))
        assert tables(database) == DAEMON_TABLES | {"runs"}, name
        assert stored_version(database) == [schema.LATEST_VERSION], name
        with sqlite3.connect(database) as connection:
            claims = columns(connection, "fusion_runner_claims")
        connection.close()
        assert claims[:len(V2_CLAIMS_COLUMNS)] == V2_CLAIMS_COLUMNS, name
        assert "log_offset" in claims, name


def test_a_recorded_older_version_runs_only_the_steps_after_it(tmp_path: Path) -> None:
    database = tmp_path / "v3.db"
    open_store(sqlite_url(database))
    # Version 3 recorded: its own step (which makes the outputs table) is not run again.
    make(database, "DROP TABLE fusion_runner_workers", "DROP TABLE fusion_runner_outputs",
         "UPDATE fusion_runner_schema SET version = 3")

    open_store(sqlite_url(database))

    assert tables(database) == DAEMON_TABLES - {"fusion_runner_outputs"} | {"runs"}
    assert stored_version(database) == [schema.LATEST_VERSION]


def test_a_newer_version_is_left_as_it_is(tmp_path: Path) -> None:
    database = tmp_path / "newer.db"
    open_store(sqlite_url(database))
    make(database, "UPDATE fusion_runner_schema SET version = 99")

    open_store(sqlite_url(database))  # an older daemon on a database a newer one upgraded

    assert stored_version(database) == [99]


def test_a_runs_table_lacking_a_column_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    database = tmp_path / "bad.db"
    make(database, RUNS_TABLE.replace("    total_iterations INTEGER,\n", ""))

    with pytest.raises(SchemaError, match="total_iterations"):
        open_store(sqlite_url(database))

    assert tables(database) == {"runs"}


def at_once(action: Callable[[], None], count: int = 2) -> list[BaseException]:
    """`count` threads calling `action` at the same moment; what they raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            action()
        except BaseException as error:  # reported by the caller
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_processes_creating_an_empty_sqlite_database_at_once_all_succeed(tmp_path: Path) -> None:
    for attempt in range(5):
        database = tmp_path / f"race{attempt}.db"
        assert at_once(lambda database=database: open_store(sqlite_url(database)), 3) == []
        assert stored_version(database) == [schema.LATEST_VERSION]


def test_upgrading_a_first_release_database_at_once_succeeds(tmp_path: Path) -> None:
    for attempt in range(3):
        database = tmp_path / f"legacy{attempt}.db"
        with sqlite3.connect(database) as connection:
            create_legacy_database(connection)
        connection.close()
        assert at_once(lambda database=database: open_store(sqlite_url(database)), 3) == []
        assert stored_version(database) == [schema.LATEST_VERSION]


# --- PostgreSQL ----------------------------------------------------------------------


def pg_versions(url: str) -> tuple[set[str], list[int]]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        found = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            query = text("SELECT version FROM fusion_runner_schema")
            versions = list(conn.execute(query).scalars())
    finally:
        engine.dispose()
    return found, versions


@pytest.mark.postgres
def test_postgres_empty_database_made_by_several_processes_at_once(pg_url: str) -> None:
    assert at_once(lambda: open_store(pg_url), 4) == []

    found, versions = pg_versions(pg_url)
    assert found >= DAEMON_TABLES | {"runs"}
    assert versions == [schema.LATEST_VERSION]


@pytest.mark.postgres
def test_postgres_first_release_database_is_upgraded_at_once(pg_url: str) -> None:
    from tests.legacy_schema import LEGACY_CLAIMS_TABLE

    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.begin() as conn:
        for table in (RUNS_TABLE, LEGACY_CLAIMS_TABLE):
            conn.execute(text(table.replace("DATETIME", "TIMESTAMP WITHOUT TIME ZONE")))
    engine.dispose()

    assert at_once(lambda: open_store(pg_url), 3) == []

    found, versions = pg_versions(pg_url)
    assert found >= DAEMON_TABLES
    assert versions == [schema.LATEST_VERSION]
