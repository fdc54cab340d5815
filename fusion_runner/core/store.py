"""Every SQL statement fusion-runner runs, one verb per method.

Each write is a short transaction; every change the daemon makes to `runs` is
conditional on the status it expects, and reports whether it won, so a
client's concurrent change is never overwritten. Hot paths use SQLAlchemy Core.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Table,
    Update,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import Column, CreateColumn

from fusion_runner.core import config as config_module
from fusion_runner.core.clock import utcnow as utcnow  # re-exported: the daemon imports it here
from fusion_runner.core.errors import ConfigError, DatabaseError, SchemaError
from fusion_runner.core.models import RUNS_COLUMNS, Base, Run, RunClaim, RunOutput
from fusion_runner.core.progress import PROGRESS_COLUMNS
from fusion_runner.core.status import RunStatus

runs = cast(Table, Run.__table__)
claims = cast(Table, RunClaim.__table__)
outputs = cast(Table, RunOutput.__table__)
# How many of the oldest PENDING rows one claim attempt considers; another
# daemon may win some of them.
CLAIM_CANDIDATES = 8
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Tries at creating the daemon's tables when another process creates them too.
CREATE_ATTEMPTS = 3
# Tries at switching a new database to WAL while another process does the same.
WAL_ATTEMPTS = 20
# Every error a statement can end with, through SQLAlchemy or on the raw
# DBAPI connection (translated to DatabaseError): the loop outlives them all.
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, DatabaseError)


# Hot statements are built once: building a statement costs more than running
# it on SQLite (~0.2 ms against ~0.05 ms here).
_OLDEST_PENDING = (
    select(runs.c.id, runs.c.config_json, runs.c.template)
    .where(runs.c.status == RunStatus.PENDING)
    .order_by(runs.c.created_at, runs.c.id)
    .limit(CLAIM_CANDIDATES)
)
_STATUSES = select(runs.c.id, runs.c.status).where(
    runs.c.id.in_(bindparam("ids", expanding=True))
)
_SAVE_OFFSET = (
    update(claims).where(claims.c.run_id == bindparam("claimed_run"))
    .values(progress_offset=bindparam("offset"), log_offset=bindparam("log_offset"))
)
_NEVER_CLAIMED = ~select(claims.c.run_id).where(claims.c.run_id == runs.c.id).exists()
_CANCELLED_PENDING = (
    (runs.c.status == RunStatus.CANCELLED)
    & runs.c.completed_at.is_(None)
    & runs.c.pid.is_(None)
    & _NEVER_CLAIMED
)
_CANCELLED_PENDING_IDS = select(runs.c.id).where(_CANCELLED_PENDING)


@functools.lru_cache(maxsize=64)
def _conditional_update_statement(columns: tuple[str, ...]) -> Update:
    """UPDATE runs SET <columns> WHERE id = :this_run AND status = :expected."""
    return (
        update(runs)
        .where((runs.c.id == bindparam("this_run")) & (runs.c.status == bindparam("expected")))
        .values({column: bindparam(f"new_{column}") for column in columns})
    )


@dataclass(frozen=True)
class ClaimedRun:
    id: str
    config_json: str
    template: str


@dataclass(frozen=True)
class OwnedRun:
    """A run a daemon with this worker id claimed and has not finished."""

    id: str
    status: str  # as the row has it: a client may have written any text
    pid: int | None
    pgid: int | None
    process_start_ticks: int | None  # None in rows of earlier versions
    boot_id: str | None
    process_start_time: float | None  # what earlier versions recorded alone
    run_dir: str | None
    progress_offset: int | None
    log_offset: int | None
    progress: dict[str, float | int | None]


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    # Safe with WAL: a power cut may lose the last commits, never corrupt.
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _enable_wal(cursor: Any) -> None:
    """journal_mode = WAL, again when two processes open a database not yet in WAL
    mode at once: switching needs the database to itself, and SQLite then answers
    "database is locked" at once instead of waiting out the busy timeout."""
    for attempt in range(1, WAL_ATTEMPTS + 1):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == WAL_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)


def make_engine(database_url: str) -> Engine:
    """An engine for a `database_url` of SPEC §8; SQLite gets WAL and a busy timeout."""
    sqlite_file = config_module.sqlite_path(database_url)
    if sqlite_file is not None:
        try:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            folder = sqlite_file.parent
            raise ConfigError(f"database_url: cannot create {folder}: {error}") from None
        # One connection for the whole process: then SQLite's data_version
        # changes only when another process commits (see `changed_by_others`).
        engine = create_engine(f"sqlite:///{sqlite_file}", poolclass=StaticPool)
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(config_module.sqlalchemy_url(database_url), pool_pre_ping=True)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._data_version: int | None = None
        self.writes = 0  # statements of ours that changed a row: see `_count_write`
        event.listen(engine, "after_cursor_execute", self._count_write)

    @classmethod
    def open(cls, database_url: str, *, upgrade_claims: bool = True) -> Store:
        store = cls(make_engine(database_url))
        store.ensure_schema(upgrade_claims=upgrade_claims)
        return store

    def close(self) -> None:
        self.engine.dispose()

    def ensure_schema(self, *, upgrade_claims: bool = True) -> None:
        """Create missing tables and, with `upgrade_claims`, add the columns an
        earlier version's claims table lacks and the daemon's newer tables;
        refuse a `runs` table that lacks a column (never altered: it is the GUI's)."""
        try:
            inspector = inspect(self.engine)
            if inspector.has_table("runs"):
                present = {column["name"] for column in inspector.get_columns("runs")}
                missing = [name for name in RUNS_COLUMNS if name not in present]
                if missing:
                    raise SchemaError(f"the runs table lacks column {missing[0]!r}")
            # Without `upgrade_claims` (the client commands) a table the daemon
            # alone writes is left missing, as a user who may only read needs.
            self._create_missing_tables(None if upgrade_claims else [runs, claims])
            for column in self._missing_claim_columns() if upgrade_claims else []:
                self._add_claim_column(column)
        except SQLAlchemyError as error:
            raise ConfigError(f"database_url: cannot open the database: {error}") from None

    def _create_missing_tables(self, tables: list[Table] | None) -> None:
        """CREATE TABLE for those missing, tolerant of another process (a second daemon,
        a client command) creating one at the same moment."""
        for attempt in range(CREATE_ATTEMPTS):
            try:
                Base.metadata.create_all(self.engine, tables=tables)
                return
            except SQLAlchemyError:
                # "already exists", or SQLite's immediate "database is locked" for the
                # one of two connections that both turn a read into a write: look
                # again, and try again while a table is still missing.
                present = set(inspect(self.engine).get_table_names())
                wanted = tables or Base.metadata.sorted_tables
                if all(table.name in present for table in wanted):
                    return
                if attempt == CREATE_ATTEMPTS - 1:
                    raise

    def _missing_claim_columns(self) -> list[Column[Any]]:
        # A new inspector each time: one caches what it has read.
        present = {column["name"] for column in inspect(self.engine).get_columns(claims.name)}
        return [column for column in claims.columns if column.name not in present]

    def _add_claim_column(self, column: Column[Any]) -> None:
        """ALTER TABLE fusion_runner_claims ADD COLUMN, tolerant of another process
        (a second daemon, a client command) adding it at the same moment."""
        table = self.engine.dialect.identifier_preparer.format_table(claims)
        definition = CreateColumn(column).compile(dialect=self.engine.dialect)
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {definition}"))
        except SQLAlchemyError as error:
            # Most likely "duplicate column": look again, and fail only if it is still missing.
            if any(missing.name == column.name for missing in self._missing_claim_columns()):
                raise SchemaError(f"the {claims.name} table lacks column {column.name!r} and "
                                  f"it could not be added: {error}") from None

    def _count_write(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                     context: Any, executemany: bool) -> None:
        # A change of ours wakes the daemon's database watch as a client's
        # does; the loop tells them apart by this count.
        changes = context is not None and (context.isupdate or context.isinsert or context.isdelete)
        if changes and cursor.rowcount != 0:
            self.writes += 1

    # --- the daemon's verbs -------------------------------------------------

    def changed_by_others(self) -> bool:
        """Whether anyone else may have committed since the last call.

        On SQLite this is exact and costs a few microseconds (PRAGMA
        data_version ignores our own commits), so a wake-up caused by the
        daemon's own progress writes costs no queries. Elsewhere: always True.
        """
        if not self._is_sqlite:
            return True
        # The DBAPI connection itself: this runs on every pass of the loop.
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("PRAGMA data_version")
            row = cursor.fetchone()
            version = int(row[0]) if row else 0
            cursor.close()
        except sqlite3.Error as error:
            raise DatabaseError(f"PRAGMA data_version: {error}") from error
        finally:
            connection.close()
        changed = version != self._data_version
        self._data_version = version
        return changed

    def claim_next(self, worker_id: str, busy: Collection[str] = ()) -> ClaimedRun | None:
        """PENDING -> RUNNING for the oldest run another daemon has not won.

        Runs in `busy` are skipped: a client set one back to PENDING while its
        processes are still being stopped, and it must not run twice at once.
        """
        with self.engine.connect() as conn:
            candidates = conn.execute(_OLDEST_PENDING).all()
        for candidate in candidates:
            if candidate.id in busy:
                continue
            if self._try_claim(candidate.id, worker_id):
                return ClaimedRun(candidate.id, candidate.config_json, candidate.template)
        return None

    def _try_claim(self, run_id: str, worker_id: str) -> bool:
        with self.engine.begin() as conn:
            # PENDING -> RUNNING
            won = _conditional_update(conn, run_id, RunStatus.PENDING, status=RunStatus.RUNNING)
            if won:
                conn.execute(delete(claims).where(claims.c.run_id == run_id))
                conn.execute(
                    insert(claims).values(run_id=run_id, worker_id=worker_id, claimed_at=utcnow())
                )
            return won

    def mark_started(
        self, run_id: str, *, pid: int, pgid: int, process_start_ticks: int | None,
        boot_id: str | None, process_start_time: float | None, run_dir: Path,
        started_at: datetime | None = None,
    ) -> bool:
        """Record the spawned process; False if the run is no longer RUNNING."""
        with self.engine.begin() as conn:
            won = _conditional_update(
                conn, run_id, RunStatus.RUNNING, pid=pid, pgid=pgid,
                started_at=started_at or utcnow(),
            )
            conn.execute(
                update(claims)
                .where(claims.c.run_id == run_id)
                .values(pid=pid, pgid=pgid, process_start_ticks=process_start_ticks,
                        boot_id=boot_id, process_start_time=process_start_time,
                        run_dir=str(run_dir))
            )
            return won

    def record_identity(
        self, run_id: str, *, process_start_ticks: int, boot_id: str | None
    ) -> None:
        """The start ticks and boot id of a run an earlier version recorded without them."""
        with self.engine.begin() as conn:
            conn.execute(
                update(claims).where(claims.c.run_id == run_id)
                .values(process_start_ticks=process_start_ticks, boot_id=boot_id)
            )

    def transition(
        self, run_id: str, expected: str, new: str, **fields: object
    ) -> bool:
        """expected -> new with `fields`, only if the row still has `expected`."""
        with self.engine.begin() as conn:
            return _conditional_update(conn, run_id, expected, status=new, **fields)

    def write_progress(
        self, run_id: str, columns: Mapping[str, float | int | None], offset: int,
        log_offset: int | None = None,
    ) -> bool:
        """Progress columns of a RUNNING run, and how far its file and its log were read
        (`log_offset` None: the log does not drive the columns)."""
        if self._is_sqlite:
            return self._write_progress_sqlite(run_id, columns, offset, log_offset)
        with self.engine.begin() as conn:
            won = _conditional_update(conn, run_id, RunStatus.RUNNING, **columns)
            conn.execute(_SAVE_OFFSET, {"claimed_run": run_id, "offset": offset,
                                        "log_offset": log_offset})
            return won

    def _write_progress_sqlite(
        self, run_id: str, columns: Mapping[str, float | int | None], offset: int,
        log_offset: int | None,
    ) -> bool:
        # The daemon's most frequent write (ten runs: 200 a second), straight on
        # the DBAPI connection: ~15 us here against ~120 us through Core.
        names = sorted(columns)
        if not set(names) <= set(PROGRESS_COLUMNS):
            raise ValueError(f"not progress columns: {names}")
        assignments = ", ".join(f"{name} = ?" for name in names)
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(
                f"UPDATE runs SET {assignments} WHERE id = ? AND status = ?",
                [*(columns[name] for name in names), run_id, RunStatus.RUNNING.value],
            )
            won = bool(cursor.rowcount == 1)
            cursor.execute(
                "UPDATE fusion_runner_claims SET progress_offset = ?, log_offset = ? "
                "WHERE run_id = ?",
                (offset, log_offset, run_id),
            )
            connection.commit()
        except BaseException as error:
            connection.rollback()
            if isinstance(error, sqlite3.Error):
                raise DatabaseError(f"progress of run {run_id}: {error}") from error
            raise
        finally:
            connection.close()
        self.writes += 1
        return won

    def complete_client_status(self, run_id: str, status: str) -> bool:
        """completed_at of a run a client ended with `status`, if the client left it unset."""
        statement = (
            update(runs)
            .where((runs.c.id == run_id) & (runs.c.status == status)
                   & runs.c.completed_at.is_(None))
            .values(completed_at=utcnow())
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(statement).rowcount == 1)

    def owned_unfinished(self, worker_id: str) -> list[OwnedRun]:
        """Runs claimed under `worker_id` that are not PENDING and have no completed_at.

        RUNNING ones, and those a client ended (CANCELLED, FAILED, any other
        text) whose processes may still have to be stopped.
        """
        unfinished = (runs.c.status != RunStatus.PENDING) & runs.c.completed_at.is_(None)
        query = (
            select(runs, claims.c.process_start_ticks, claims.c.boot_id,
                   claims.c.process_start_time, claims.c.run_dir, claims.c.progress_offset,
                   claims.c.log_offset)
            .join(claims, claims.c.run_id == runs.c.id)
            .where((claims.c.worker_id == worker_id) & unfinished)
            .order_by(runs.c.created_at)
        )
        with self.engine.connect() as conn:
            return [
                OwnedRun(
                    id=row.id, status=row.status, pid=row.pid, pgid=row.pgid,
                    process_start_ticks=row.process_start_ticks, boot_id=row.boot_id,
                    process_start_time=row.process_start_time, run_dir=row.run_dir,
                    progress_offset=row.progress_offset, log_offset=row.log_offset,
                    progress={name: getattr(row, name) for name in PROGRESS_COLUMNS},
                )
                for row in conn.execute(query)
            ]

    def add_output(self, run_id: str, path: str) -> bool:
        """Note a folder of the run's results; False if it was noted already.

        Only the daemon that owns the run writes its folders, so the check and
        the insert need no lock against another writer.
        """
        noted = select(outputs.c.run_id).where(
            (outputs.c.run_id == run_id) & (outputs.c.path == path))
        with self.engine.begin() as conn:
            if conn.execute(noted).first() is not None:
                return False
            conn.execute(insert(outputs).values(run_id=run_id, path=path, first_seen=utcnow()))
            return True

    def release_claim(self, run_id: str) -> bool:
        """RUNNING -> PENDING for a run claimed but never spawned."""
        with self.engine.begin() as conn:
            statement = update(runs).where(
                (runs.c.id == run_id) & (runs.c.status == RunStatus.RUNNING) & runs.c.pid.is_(None)
            )
            won = bool(conn.execute(statement.values(status=RunStatus.PENDING)).rowcount == 1)
            if won:
                conn.execute(delete(claims).where(claims.c.run_id == run_id))
            return won

    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        """Current status of each id that still has a row (a deleted run is absent).

        As the row has it: a client may write a status the SPEC does not name.
        """
        ids = list(run_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(_STATUSES, {"ids": ids})
            return {row.id: str(row.status) for row in rows}

    def complete_cancelled_pending(self) -> list[str]:
        """Set `completed_at` of runs cancelled before any daemon claimed them."""
        with self.engine.begin() as conn:
            ids = list(conn.execute(_CANCELLED_PENDING_IDS).scalars())
            if ids:
                conn.execute(
                    update(runs)
                    .where(runs.c.id.in_(ids) & _CANCELLED_PENDING)
                    .values(completed_at=utcnow())
                )
            return ids

    # --- the client commands' verbs -------------------------------------------

    def insert_run(
        self, run_id: str, *, name: str | None, config_json: str, template: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(runs).values(
                    id=run_id, name=name, status=RunStatus.PENDING, config_json=config_json,
                    template=template, created_at=utcnow(),
                )
            )

    def get_run(self, run_id: str) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(select(runs).where(runs.c.id == run_id)).first()

    def count_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs.c.status, func.count()).group_by(runs.c.status))
            return {status: count for status, count in rows.tuples()}

    def cancel(self, run_id: str) -> tuple[str | None, bool]:
        """The status the run had, and whether this call cancelled it.

        Only PENDING and RUNNING runs are cancelled: a final status, or one the
        SPEC does not name, is left as it is.
        """
        for _ in range(3):
            row = self.get_run(run_id)
            if row is None:
                return None, False
            before = str(row.status)
            if before not in (RunStatus.PENDING, RunStatus.RUNNING):
                return before, False
            # PENDING -> CANCELLED, RUNNING -> CANCELLED (the client's move)
            if self.transition(run_id, before, RunStatus.CANCELLED):
                return before, True
        return before, False

    # --- lookups for the command line (ids by prefix, filtered lists, run dir) --

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids that start with `prefix` (case as given), sorted, at most `limit`."""
        query = (
            select(runs.c.id)
            .where(func.substr(runs.c.id, 1, len(prefix)) == prefix)
            .order_by(runs.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def get_runs(self, run_ids: Iterable[str]) -> dict[str, Row[Any]]:
        """The rows of those ids that still exist, by id."""
        ids = list(run_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            return {row.id: row for row in conn.execute(select(runs).where(runs.c.id.in_(ids)))}

    def select_runs(
        self, statuses: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Row[Any]]:
        """Runs newest first; only those with one of `statuses` when given."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)
        if statuses is not None:
            query = query.where(runs.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

    def count_runs(self, statuses: Iterable[str] | None = None) -> int:
        query = select(func.count()).select_from(runs)
        if statuses is not None:
            query = query.where(runs.c.status.in_(list(statuses)))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def run_outputs(self, run_id: str) -> list[tuple[str, datetime]]:
        """The folders of a run's results (path, first seen), oldest first; none when no
        daemon has made the table yet."""
        if not inspect(self.engine).has_table(outputs.name):
            return []
        query = (select(outputs.c.path, outputs.c.first_seen)
                 .where(outputs.c.run_id == run_id)
                 .order_by(outputs.c.first_seen, outputs.c.path))
        with self.engine.connect() as conn:
            return [(str(row.path), row.first_seen) for row in conn.execute(query)]

    def recorded_run_dir(self, run_id: str) -> str | None:
        """The run directory the daemon recorded when it spawned the run, if any."""
        query = select(claims.c.run_dir).where(claims.c.run_id == run_id)
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return None if value is None else str(value)


def _conditional_update(
    conn: Connection, run_id: str, expected: str, **values: object
) -> bool:
    statement = _conditional_update_statement(tuple(sorted(values)))
    parameters = {f"new_{column}": value for column, value in values.items()}
    result = conn.execute(statement, {"this_run": run_id, "expected": expected, **parameters})
    return bool(result.rowcount == 1)
