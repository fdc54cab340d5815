"""Every SQL statement fusion-runner runs, one verb per method.

Each write is a short transaction; every change the daemon makes to `runs` is
conditional on the status it expects, and reports whether it won, so a
client's concurrent change is never overwritten. Hot paths use SQLAlchemy Core.
This module holds `Store` and the daemon's verbs; the engine (engine.py), the
tables (schema.py) and the client commands' verbs (clientverbs.py) live beside it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Update, bindparam, delete, event, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fusion_runner.core import pgnotify, schema, sqliteraw
from fusion_runner.core.clientverbs import ClientVerbs
from fusion_runner.core.clock import utcnow
from fusion_runner.core.engine import make_engine as make_engine  # re-exported: callers use it here
from fusion_runner.core.errors import DatabaseError
from fusion_runner.core.eventverbs import EventVerbs
from fusion_runner.core.metaverbs import MetaVerbs
from fusion_runner.core.queueverbs import NOT_HELD, QUEUE_FROM, QUEUE_ORDER, QueueVerbs
from fusion_runner.core.resultverbs import ResultVerbs
from fusion_runner.core.runrecords import OWNED_COLUMNS, owned_run
from fusion_runner.core.runrecords import ClaimedRun as ClaimedRun  # re-exported
from fusion_runner.core.runrecords import OwnedRun as OwnedRun  # re-exported
from fusion_runner.core.schema import claims, outputs, runs
from fusion_runner.core.status import RunStatus
from fusion_runner.core.workerverbs import WorkerVerbs

# How many of the oldest PENDING rows one claim attempt considers; another
# daemon may win some of them.
CLAIM_CANDIDATES = 8
# Every error a statement can end with, through SQLAlchemy or on the raw
# DBAPI connection (translated to DatabaseError): the loop outlives them all.
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, DatabaseError)


# Asked about the head of the queue before it is claimed: whether it may start now.
Admit = Callable[[ClaimedRun], bool]

# Hot statements are built once: building a statement costs more than running
# it on SQLite (~0.2 ms against ~0.05 ms here).
# A PENDING run that waits in an executor's queue (Slurm) is held by the
# daemon that put it there: no other daemon takes it.
_HELD = (claims.c.queued_at.is_not(None)) & claims.c.pid.is_(None)
_HELD_RUN = select(claims.c.run_id).where((claims.c.run_id == runs.c.id) & _HELD).exists()
# The queue's head: higher priority first, then oldest; runs a client holds are
# skipped (queueverbs.py, fusion_runner_meta).
_OLDEST_PENDING = (
    select(runs.c.id, runs.c.config_json, runs.c.template)
    .select_from(QUEUE_FROM)
    .where((runs.c.status == RunStatus.PENDING) & ~_HELD_RUN & NOT_HELD)
    .order_by(*QUEUE_ORDER)
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


class Store(ClientVerbs, WorkerVerbs, MetaVerbs, ResultVerbs, QueueVerbs, EventVerbs):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._data_version: int | None = None
        self.writes = 0  # statements of ours that changed a row: see `_count_write`
        event.listen(engine, "after_cursor_execute", self._count_write)

    @classmethod
    def open(cls, database_url: str) -> Store:
        store = cls(make_engine(database_url))
        store.ensure_schema()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def ensure_schema(self) -> None:
        """See `schema.ensure_schema`: create what is missing, upgrade the daemon's tables;
        on PostgreSQL also the trigger that wakes daemons (pgnotify)."""
        schema.ensure_schema(self.engine)
        if not self._is_sqlite:
            pgnotify.ensure_notify_trigger(self.engine)

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
        version = sqliteraw.data_version(self.engine)
        changed = version != self._data_version
        self._data_version = version
        return changed

    def claim_next(
        self, worker_id: str, busy: Collection[str] = (), admit: Admit | None = None
    ) -> ClaimedRun | None:
        """PENDING -> RUNNING for the first run of the queue (higher priority, then
        oldest; not held) that another daemon has not won.

        Runs in `busy` are skipped: a client set one back to PENDING while its
        processes are still being stopped, and it must not run twice at once.
        `admit` is asked about the head of the queue before it is claimed: False
        (it does not fit now) claims nothing, and no later run passes it.
        """
        if not self._is_sqlite:
            return self._claim_skip_locked(worker_id, busy, admit)
        return self._take_first(busy, admit, lambda run_id: self._try_claim(run_id, worker_id))

    def _take_first(
        self, busy: Collection[str], admit: Admit | None, take: Callable[[str], bool]
    ) -> ClaimedRun | None:
        """The first run of the queue that `take` wins, asking `admit` about each first."""
        with self.engine.connect() as conn:
            candidates = conn.execute(_OLDEST_PENDING).all()
        for candidate in candidates:
            if candidate.id in busy:
                continue
            run = ClaimedRun(candidate.id, candidate.config_json, candidate.template)
            if admit is not None and not admit(run):
                return None
            if take(candidate.id):
                return run
        return None

    def _claim_skip_locked(
        self, worker_id: str, busy: Collection[str], admit: Admit | None
    ) -> ClaimedRun | None:
        """PostgreSQL: lock the first PENDING row of the queue no other daemon holds,
        and take it (if `admit` lets it).

        Daemons claiming at once each get a different row at the first try,
        where the conditional update alone would have all but one lose and retry.
        """
        # Only `runs` is locked: the meta row is on the nullable side of the join.
        query = _OLDEST_PENDING.limit(1).with_for_update(skip_locked=True, of=runs)
        if busy:
            query = query.where(runs.c.id.not_in(list(busy)))
        with self.engine.begin() as conn:
            candidate = conn.execute(query).first()
            if candidate is None:
                return None
            if admit is not None and not admit(
                    ClaimedRun(candidate.id, candidate.config_json, candidate.template)):
                return None  # the lock goes with the transaction; nothing was written
            # PENDING -> RUNNING (the row is locked: the condition holds)
            if not _conditional_update(conn, candidate.id, RunStatus.PENDING,
                                       status=RunStatus.RUNNING):
                return None
            _record_claim(conn, candidate.id, worker_id)
        return ClaimedRun(candidate.id, candidate.config_json, candidate.template)

    def hold_for_queue(
        self, worker_id: str, busy: Collection[str] = (), admit: Admit | None = None
    ) -> ClaimedRun | None:
        """Take the first PENDING run of the queue (higher priority, then oldest; not
        held by a client) nobody holds into an executor's queue: the claim is this
        worker's, the row stays PENDING until the run starts (`mark_started`).
        `admit` as for `claim_next`."""
        return self._take_first(busy, admit, lambda run_id: self._try_hold(run_id, worker_id))

    def _try_hold(self, run_id: str, worker_id: str) -> bool:
        # A claim left by an earlier life of the run (it ended, a client made it
        # PENDING again) is no hold: it goes first, in a transaction of its own.
        stale = delete(claims).where((claims.c.run_id == run_id) & ~_HELD)
        with self.engine.begin() as conn:
            conn.execute(stale)
        still_pending = select(runs.c.id).where(
            (runs.c.id == run_id) & (runs.c.status == RunStatus.PENDING)).exists()
        unclaimed = ~select(claims.c.run_id).where(claims.c.run_id == run_id).exists()
        now = utcnow()
        hold = insert(claims).from_select(
            ["run_id", "worker_id", "claimed_at", "queued_at"],
            select(bindparam("run", run_id), bindparam("worker", worker_id),
                   bindparam("claimed", now), bindparam("queued", now))
            .where(still_pending & unclaimed),
        )
        try:
            # One statement: atomic on SQLite, and on PostgreSQL a second daemon
            # inserting at once meets the primary key.
            with self.engine.begin() as conn:
                return bool(conn.execute(hold).rowcount == 1)
        except IntegrityError:
            return False

    def record_job(self, run_id: str, job_id: str) -> None:
        """The executor's name for a run it has queued (Slurm's job id)."""
        with self.engine.begin() as conn:
            conn.execute(update(claims).where(claims.c.run_id == run_id).values(job_id=job_id))

    def record_queue_reason(self, run_id: str, reason: str | None) -> None:
        """Why a queued run waits, as its executor says (show prints it)."""
        with self.engine.begin() as conn:
            conn.execute(update(claims).where(claims.c.run_id == run_id)
                         .values(queue_reason=reason))

    def requeue(self, run_id: str) -> bool:
        """RUNNING -> PENDING for a run its executor put back in its queue (Slurm's
        requeue): the claim is held again until it starts anew."""
        with self.engine.begin() as conn:
            # RUNNING -> PENDING (requeued by the executor; still this daemon's)
            won = _conditional_update(conn, run_id, RunStatus.RUNNING,
                                      status=RunStatus.PENDING, pid=None, pgid=None,
                                      started_at=None)
            if won:
                conn.execute(update(claims).where(claims.c.run_id == run_id)
                             .values(pid=None, pgid=None, node=None, queued_at=utcnow()))
            return won

    def _try_claim(self, run_id: str, worker_id: str) -> bool:
        with self.engine.begin() as conn:
            # PENDING -> RUNNING
            won = _conditional_update(conn, run_id, RunStatus.PENDING, status=RunStatus.RUNNING)
            if won:
                _record_claim(conn, run_id, worker_id)
            return won

    def mark_started(
        self, run_id: str, *, pid: int, pgid: int, process_start_ticks: int | None,
        boot_id: str | None, process_start_time: float | None, run_dir: Path,
        started_at: datetime | None = None, expected: str = RunStatus.RUNNING,
        node: str | None = None,
    ) -> bool:
        """Record the started process; False if the row no longer has `expected`
        (RUNNING once claimed; PENDING for a run that waited in an executor's queue,
        which becomes RUNNING here)."""
        with self.engine.begin() as conn:
            # RUNNING (claimed) -> RUNNING with pid; PENDING (queued) -> RUNNING
            won = _conditional_update(
                conn, run_id, expected, status=RunStatus.RUNNING, pid=pid, pgid=pgid,
                started_at=started_at or utcnow(),
            )
            conn.execute(
                update(claims)
                .where(claims.c.run_id == run_id)
                .values(pid=pid, pgid=pgid, process_start_ticks=process_start_ticks,
                        boot_id=boot_id, process_start_time=process_start_time,
                        run_dir=str(run_dir), node=node, queue_reason=None)
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
            won = sqliteraw.write_progress(self.engine, run_id, columns, offset, log_offset)
            self.writes += 1
            return won
        with self.engine.begin() as conn:
            won = _conditional_update(conn, run_id, RunStatus.RUNNING, **columns)
            conn.execute(_SAVE_OFFSET, {"claimed_run": run_id, "offset": offset,
                                        "log_offset": log_offset})
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
        unfinished = ((runs.c.status != RunStatus.PENDING) | _HELD) & runs.c.completed_at.is_(None)
        query = (
            select(*OWNED_COLUMNS)
            .join(claims, claims.c.run_id == runs.c.id)
            .where((claims.c.worker_id == worker_id) & unfinished)
            .order_by(runs.c.created_at)
        )
        with self.engine.connect() as conn:
            return [owned_run(row) for row in conn.execute(query)]

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
        """RUNNING -> PENDING for a run claimed but never spawned; for one held for an
        executor's queue (its row PENDING), the hold goes."""
        with self.engine.begin() as conn:
            statement = update(runs).where(
                (runs.c.id == run_id) & (runs.c.status == RunStatus.RUNNING) & runs.c.pid.is_(None)
            )
            won = bool(conn.execute(statement.values(status=RunStatus.PENDING)).rowcount == 1)
            if won:
                conn.execute(delete(claims).where(claims.c.run_id == run_id))
                return True
            held = delete(claims).where((claims.c.run_id == run_id) & _HELD)
            return bool(conn.execute(held).rowcount == 1)

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



def _record_claim(conn: Connection, run_id: str, worker_id: str) -> None:
    """The claims row of a run just claimed (an earlier claim of it replaced)."""
    conn.execute(delete(claims).where(claims.c.run_id == run_id))
    conn.execute(insert(claims).values(run_id=run_id, worker_id=worker_id, claimed_at=utcnow()))


def _conditional_update(
    conn: Connection, run_id: str, expected: str, **values: object
) -> bool:
    statement = _conditional_update_statement(tuple(sorted(values)))
    parameters = {f"new_{column}": value for column, value in values.items()}
    result = conn.execute(statement, {"this_run": run_id, "expected": expected, **parameters})
    return bool(result.rowcount == 1)
