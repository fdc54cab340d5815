"""The tables fusion-runner uses, and making sure a database has them.

`runs` is the GUI's table: it is created when missing, never altered. The
daemon's own tables (claims, outputs, workers) carry a version, one row in
`fusion_runner_schema`, and are created or upgraded at daemon start by
`ensure_schema`:

- a database without the daemon's tables gets them all as `models.py` has
  them, stamped with the latest version;
- one with an older version runs the steps of `STEPS` after it, in order;
- one made before the version table existed is placed by what it has
  (`detect_version`), then upgraded the same way.

All of it happens in one transaction that only one process at a time may
hold: on PostgreSQL under `pg_advisory_xact_lock(SCHEMA_LOCK_KEY)` (DDL is
transactional there), on SQLite under `BEGIN IMMEDIATE` (the write lock,
waited for up to the busy timeout). Two daemons starting together on an empty
database therefore both succeed: the second finds what the first made.

Why not Alembic: the daemon's tables change by a few additive steps (a table,
a nullable column), which fit in a list here; there is nothing for
autogenerate to compare against a migration history, no downgrade is ever
run, and Alembic would add a dependency, a script tree and its own version
table to a package whose clients never migrate anything. Its migrations would
still need the advisory lock / IMMEDIATE transaction below to be race-free
when several daemons start at once.

A daemon meeting a newer version than its own leaves it as it is: every step
is additive, so an older daemon still finds every column it uses (hosts may
be upgraded one at a time).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Engine, Table, delete, insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateColumn

from fusion_runner.core.errors import ConfigError, SchemaError
from fusion_runner.core.models import (
    RUNS_COLUMNS,
    Run,
    RunClaim,
    RunEvent,
    RunMeta,
    RunOutput,
    RunResult,
    SchemaVersion,
    Worker,
)

runs = cast(Table, Run.__table__)
claims = cast(Table, RunClaim.__table__)
outputs = cast(Table, RunOutput.__table__)
workers = cast(Table, Worker.__table__)
results = cast(Table, RunResult.__table__)
events = cast(Table, RunEvent.__table__)
meta = cast(Table, RunMeta.__table__)
schema_version = cast(Table, SchemaVersion.__table__)
# The daemon's own tables: those the version describes.
DAEMON_TABLES = (claims, outputs, workers, results, events, meta)
# The key of the transaction-level advisory lock that serialises schema changes
# on PostgreSQL (a signed 64-bit constant; changing it lets two versions race).
SCHEMA_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"fusion-runner/schema").digest()[:8], "big", signed=True
)


@dataclass(frozen=True)
class Step:
    """What turns the daemon's tables of `version - 1` into those of `version`.

    Each step checks before it changes, so that one met half done (a column an
    earlier version added by itself) is completed, never failed.
    """

    version: int
    what: str
    apply: Callable[[Connection], None]


def _add_columns(table: Table, *names: str) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        present = {column["name"] for column in inspect(conn).get_columns(table.name)}
        formatted = conn.dialect.identifier_preparer.format_table(table)
        for name in names:
            if name not in present:
                definition = CreateColumn(table.c[name]).compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {formatted} ADD COLUMN {definition}"))

    return apply


def _create_tables(*tables: Table) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for table in tables:
            table.create(conn, checkfirst=True)

    return apply


def _steps(*steps: Callable[[Connection], None]) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for step in steps:
            step(conn)

    return apply


# Every version of the daemon's tables after the first. Version 1 is the
# claims table of the first release (tests/legacy_schema.py has it). Append
# only; a new column must be nullable (it is added to tables holding rows).
STEPS: tuple[Step, ...] = (
    Step(2, "claims: process_start_ticks, boot_id (a process's identity without the clock)",
         _add_columns(claims, "process_start_ticks", "boot_id")),
    Step(3, "claims: log_offset; the outputs table (progress and results from FUSION's log)",
         _steps(_add_columns(claims, "log_offset"), _create_tables(outputs))),
    Step(4, "the workers table (registration, heartbeats, leases)",
         _create_tables(workers)),
    Step(5, "claims: queued_at, job_id, node, queue_reason (executors with a queue: Slurm)",
         _add_columns(claims, "queued_at", "job_id", "node", "queue_reason")),
    Step(6, "results, events (history), meta (lineage, priority, hold); claims: stalled_at",
         _steps(_create_tables(results, events, meta), _add_columns(claims, "stalled_at"))),
)  # fmt: skip
LATEST_VERSION = STEPS[-1].version


def ensure_schema(engine: Engine) -> None:
    """Create what is missing, upgrade the daemon's tables to LATEST_VERSION; refuse a
    `runs` table that lacks a column (never altered: it is the GUI's).

    The daemon's alone: clients open the database as it is (clientdb).
    """
    try:
        with exclusive(engine) as conn:
            _check_or_create_runs(conn)
            version = stored_version(conn)
            if version is None:
                version = detect_version(conn)
            if version == 0:
                # None of the daemon's tables yet: made as models.py has them.
                for table in DAEMON_TABLES:
                    table.create(conn, checkfirst=True)
                version = LATEST_VERSION
            for step in STEPS:
                if step.version > version:
                    step.apply(conn)
            _store_version(conn, max(version, LATEST_VERSION))
    except SQLAlchemyError as error:
        raise ConfigError(f"database_url: cannot open the database: {error}") from None
    # PostgreSQL's notify trigger on `runs` (pgnotify.ensure_notify_trigger) is
    # created by Store.ensure_schema right after this; it may take the same lock
    # with `exclusive(engine)` when it needs to be alone.


@contextlib.contextmanager
def exclusive(engine: Engine) -> Iterator[Connection]:
    """A transaction no other process's `exclusive` runs beside: committed at the end,
    rolled back on an error.

    PostgreSQL: `pg_advisory_xact_lock`, released by the commit. SQLite: `BEGIN
    IMMEDIATE`, which takes the write lock at once (waiting out the busy
    timeout for another writer) instead of at the first write, where two
    connections that both read first would fail with "database is locked".
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            yield conn
        return
    with engine.connect() as conn:
        # The driver's own transaction handling off: BEGIN and COMMIT are ours.
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


def stored_version(conn: Connection) -> int | None:
    """The version the database records; None when it has no version table."""
    if not inspect(conn).has_table(schema_version.name):
        return None
    value = conn.execute(select(schema_version.c.version)
                         .order_by(schema_version.c.version.desc())).scalar()
    return None if value is None else int(value)


def detect_version(conn: Connection) -> int:
    """The version of a database made before the version table, from what it has:
    0 when it has none of the daemon's tables."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    if claims.name not in tables:
        return 0
    columns = {column["name"] for column in inspector.get_columns(claims.name)}
    if not {"process_start_ticks", "boot_id"} <= columns:
        return 1
    if "log_offset" not in columns or outputs.name not in tables:
        return 2
    if workers.name not in tables:
        return 3
    if "job_id" not in columns:
        return 4
    if "stalled_at" not in columns or meta.name not in tables:
        return 5
    return 6


def _store_version(conn: Connection, version: int) -> None:
    schema_version.create(conn, checkfirst=True)
    if stored_version(conn) == version:
        return
    conn.execute(delete(schema_version))
    conn.execute(insert(schema_version).values(version=version))


def _check_or_create_runs(conn: Connection) -> None:
    inspector = inspect(conn)
    if not inspector.has_table(runs.name):
        runs.create(conn)
        return
    present = {column["name"] for column in inspector.get_columns(runs.name)}
    missing = [name for name in RUNS_COLUMNS if name not in present]
    if missing:
        raise SchemaError(f"the runs table lacks column {missing[0]!r}")

