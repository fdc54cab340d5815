"""The verbs of the workers table: a daemon's registration, heartbeats and clean
stop, declaring other daemons lost (their lease expired), and what `fusion-runner
workers` and `show` read.

`WorkerVerbs` is a mixin that `store.Store` combines with the other verbs.

Times are each host's own `utcnow()` (naive UTC, as every DateTime column holds
them), compared across hosts: the hosts sharing a database need synchronised
clocks (NTP), off by far less than `lease_timeout_seconds`, or a daemon whose
clock runs ahead declares a live one lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, inspect, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from fusion_runner.core.clock import utcnow
from fusion_runner.core.eventverbs import event_row, insert_events
from fusion_runner.core.runrecords import OWNED_COLUMNS, OwnedRun, owned_run
from fusion_runner.core.schema import claims, runs, workers
from fusion_runner.core.status import RunStatus


@dataclass(frozen=True)
class Registration:
    """Who a daemon is, as its workers row says."""

    worker_id: str
    host: str
    boot_id: str | None
    pid: int
    version: str
    started_at: datetime


@dataclass(frozen=True)
class LostWorker:
    """A worker this daemon declared lost, and the runs it failed for it."""

    worker_id: str
    host: str
    heartbeat_at: datetime
    lost_at: datetime
    runs: list[str]


def lost_message(worker_id: str, host: str, heartbeat_at: datetime) -> str:
    """The error_message of a run failed because its worker was lost."""
    since = heartbeat_at.isoformat(timespec="seconds") + "Z"
    return f"worker {worker_id} on {host} lost (no heartbeat since {since})"


class WorkerVerbs:
    engine: Engine

    # --- the daemon's own row ----------------------------------------------------

    def register_worker(self, me: Registration, running: int = 0) -> Row[Any] | None:
        """Write the row of `me.worker_id` afresh (a restarted daemon, or one whose lease
        expired, replaces it: stopped_at and lost_at cleared); the row it replaced."""
        now = utcnow()
        values = {"host": me.host, "boot_id": me.boot_id, "pid": me.pid,
                  "version": me.version, "started_at": me.started_at, "heartbeat_at": now,
                  "stopped_at": None, "running": running, "lost_at": None}
        before = self.worker(me.worker_id)
        mine = workers.c.worker_id == me.worker_id
        for _ in range(2):
            try:
                with self.engine.begin() as conn:
                    if conn.execute(update(workers).where(mine).values(values)).rowcount == 0:
                        conn.execute(insert(workers).values(worker_id=me.worker_id, **values))
                return before
            except IntegrityError:
                continue  # inserted meanwhile (a daemon of the same id starting): update it
        raise RuntimeError(f"cannot register worker {me.worker_id!r}")

    def heartbeat(self, worker_id: str, running: int) -> bool:
        """Note that `worker_id` is alive with `running` runs; False when its row says it
        was declared lost (or it has none): then it registers again."""
        statement = (
            update(workers)
            .where((workers.c.worker_id == worker_id) & workers.c.lost_at.is_(None))
            .values(heartbeat_at=utcnow(), running=running)
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(statement).rowcount == 1)

    def worker_stopped(self, worker_id: str) -> None:
        """A clean stop: the worker is not lost, and no other daemon fails its runs."""
        now = utcnow()
        statement = (update(workers).where(workers.c.worker_id == worker_id)
                     .values(stopped_at=now, heartbeat_at=now))
        with self.engine.begin() as conn:
            conn.execute(statement)

    def worker(self, worker_id: str) -> Row[Any] | None:
        with self.engine.connect() as conn:
            return conn.execute(select(workers).where(workers.c.worker_id == worker_id)).first()

    # --- leases ------------------------------------------------------------------

    def declare_lost_workers(
        self, me: str, now: datetime, lease_timeout: float
    ) -> list[LostWorker]:
        """Declare lost every other worker whose heartbeat is older than the lease, that
        was not declared lost already and did not stop cleanly leaving no RUNNING run,
        and fail its RUNNING runs.

        Each worker exactly once, however many daemons declare at the same time:
        lost_at is set only where it is still NULL and the heartbeat still the one
        read, in the transaction that then fails the runs (RUNNING -> FAILED, each
        conditional, so a run that ended meanwhile keeps its outcome). A heartbeat
        that comes in between wins: the worker is not lost. The runs' completed_at
        is `now`, the moment they were declared lost.
        """
        cutoff = now - timedelta(seconds=lease_timeout)
        # A worker that stopped cleanly but left runs RUNNING (on_shutdown =
        # "detach") must come back within the lease too: else nobody watches them.
        left_runs = (
            select(runs.c.id)
            .join(claims, claims.c.run_id == runs.c.id)
            .where((claims.c.worker_id == workers.c.worker_id)
                   & (runs.c.status == RunStatus.RUNNING))
            .exists()
        )
        stale = (
            select(workers.c.worker_id, workers.c.host, workers.c.heartbeat_at)
            .where((workers.c.worker_id != me) & (workers.c.stopped_at.is_(None) | left_runs)
                   & workers.c.lost_at.is_(None) & (workers.c.heartbeat_at < cutoff))
            .order_by(workers.c.worker_id)
        )
        with self.engine.connect() as conn:
            candidates = conn.execute(stale).all()
        declared = []
        for candidate in candidates:
            lost = self._declare_lost(candidate.worker_id, candidate.host,
                                      candidate.heartbeat_at, now, me)
            if lost is not None:
                declared.append(lost)
        return declared

    def _declare_lost(
        self, worker_id: str, host: str, heartbeat_at: datetime, now: datetime,
        me: str | None = None,
    ) -> LostWorker | None:
        mark = (
            update(workers)
            .where((workers.c.worker_id == worker_id) & workers.c.lost_at.is_(None)
                   & (workers.c.heartbeat_at == heartbeat_at))
            .values(lost_at=now, running=0)
        )
        running = (
            select(runs.c.id)
            .join(claims, claims.c.run_id == runs.c.id)
            .where((claims.c.worker_id == worker_id) & (runs.c.status == RunStatus.RUNNING))
            .order_by(runs.c.created_at, runs.c.id)
        )
        message = lost_message(worker_id, host, heartbeat_at)
        failed = []
        with self.engine.begin() as conn:
            # The write first: on SQLite it takes the write lock before anything is
            # read; on PostgreSQL a second declarer waits on the row, then finds
            # lost_at set and changes nothing.
            if conn.execute(mark).rowcount != 1:
                return None
            for run_id in conn.execute(running).scalars():
                # RUNNING -> FAILED (its worker was lost)
                fail = (
                    update(runs)
                    .where((runs.c.id == run_id) & (runs.c.status == RunStatus.RUNNING))
                    .values(status=RunStatus.FAILED, error_message=message, completed_at=now)
                )
                if conn.execute(fail).rowcount == 1:
                    failed.append(str(run_id))
            # Each run's history says so, in the transaction that declared it: once.
            insert_events(conn, [event_row(run_id, "lost", message, me, now)
                                 for run_id in failed])
        return LostWorker(worker_id, host, heartbeat_at, now, failed)

    def runs_failed_as_lost(self, worker_id: str) -> list[OwnedRun]:
        """Runs of `worker_id` that another daemon failed when it declared this worker
        lost, while its row still says so (before it registers again).

        Their processes may live on (this daemon was stopped, not its runs): the
        daemon stops them as it does a client's FAILED, and leaves the rows.
        Told apart by their completed_at, which is the worker's lost_at.
        """

        query = (
            select(*OWNED_COLUMNS)
            .join(claims, claims.c.run_id == runs.c.id)
            .join(workers, workers.c.worker_id == claims.c.worker_id)
            .where((claims.c.worker_id == worker_id) & workers.c.lost_at.is_not(None)
                   & (runs.c.status == RunStatus.FAILED)
                   & (runs.c.completed_at == workers.c.lost_at))
            .order_by(runs.c.created_at)
        )
        with self.engine.connect() as conn:
            return [owned_run(row) for row in conn.execute(query)]

    # --- for the client commands ---------------------------------------------------

    def list_workers(self) -> list[Row[Any]] | None:
        """Every worker's row by worker_id; None when no daemon of this version has
        made the table yet."""
        if not inspect(self.engine).has_table(workers.name):
            return None
        with self.engine.connect() as conn:
            return list(conn.execute(select(workers).order_by(workers.c.worker_id)).all())
