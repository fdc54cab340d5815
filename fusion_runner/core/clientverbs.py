"""The verbs of the client commands (submit, cancel, list, show) and their lookups.

`ClientVerbs` is a mixin that `store.Store` combines with the daemon's verbs,
so a client and the daemon hold one kind of store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import Engine, func, insert, inspect, select, true
from sqlalchemy.engine import Row

from fusion_runner.core.clock import utcnow
from fusion_runner.core.queueverbs import HELD, NOT_HELD, QUEUE_FROM, QUEUE_ORDER
from fusion_runner.core.schema import claims, meta, outputs, runs
from fusion_runner.core.status import RunStatus

# The claims columns a client reads (ClaimFacts' fields).
CLAIM_FACTS = ("worker_id", "node", "stalled_at", "run_dir")


@dataclass(frozen=True)
class ClaimFacts:
    """What the daemon recorded of a run it claimed, as a client reads it."""

    worker_id: str | None = None  # the daemon that claimed it last
    node: str | None = None  # where its Slurm job runs or ran
    stalled_at: datetime | None = None  # since when its progress is marked stalled
    run_dir: str | None = None  # the folder it was started in


class ClientVerbs:
    engine: Engine

    def transition(self, run_id: str, expected: str, new: str, **fields: object) -> bool:
        """The daemon's conditional status change, which `cancel` makes too: see Store."""
        raise NotImplementedError

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

    def queue_positions(self, run_ids: Iterable[str]) -> dict[str, int | str]:
        """Where each PENDING run of `run_ids` stands in the daemon's queue, by id.

        1 is the run the daemon claims next: higher priority first, then oldest
        `created_at`, ties by id, as `Store.claim_next` takes them (queueverbs.py);
        a run a client holds is `"held"`, outside the count. Runs that are not
        PENDING are left out. One query (two on a database without the meta
        table); a long list of ids is filtered here rather than bound.
        """
        ids = set(run_ids)
        if not ids:
            return {}
        with_meta = inspect(self.engine).has_table(meta.name)
        order = QUEUE_ORDER if with_meta else (runs.c.created_at, runs.c.id)
        waiting = (runs.c.status == RunStatus.PENDING) & (NOT_HELD if with_meta else true())
        place = func.row_number().over(order_by=order).label("place")
        queue = (select(runs.c.id, place).select_from(QUEUE_FROM if with_meta else runs)
                 .where(waiting).subquery())
        query = select(queue.c.id, queue.c.place)
        held = select(runs.c.id).select_from(QUEUE_FROM).where(
            (runs.c.status == RunStatus.PENDING) & ~NOT_HELD)
        if len(ids) <= 500:  # far below the bound parameters a database takes (SQLite: 32766)
            query = query.where(queue.c.id.in_(sorted(ids)))
            held = held.where(runs.c.id.in_(sorted(ids)))
        with self.engine.connect() as conn:
            places: dict[str, int | str] = {
                str(row.id): int(row.place) for row in conn.execute(query) if row.id in ids}
            if with_meta:
                places |= {str(run_id): HELD for run_id in conn.execute(held).scalars()
                           if run_id in ids}
        return places

    def select_cancellable(
        self, statuses: Iterable[str] | None = None, name_glob: str | None = None
    ) -> list[Row[Any]]:
        """The PENDING and RUNNING runs that `cancel --status/--name` selects, oldest first.

        Only those with one of `statuses` when given (a final status selects
        none); only those whose name matches `name_glob` when given: an fnmatch
        pattern (`*`, `?`, `[seq]`, `[!seq]`), case-sensitive, matched against
        the whole name, a run without one having "". The statuses are filtered
        by the database, the names here: no SQL pattern means the same thing
        on SQLite and PostgreSQL.
        """
        active = [RunStatus.PENDING.value, RunStatus.RUNNING.value]
        wanted = active if statuses is None else [s for s in active if s in set(statuses)]
        if not wanted:
            return []
        query = select(runs).where(runs.c.status.in_(wanted)).order_by(runs.c.created_at, runs.c.id)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).all())
        if name_glob is None:
            return rows
        return [row for row in rows if fnmatchcase(row.name or "", name_glob)]

    def queue_of(self, run_id: str) -> dict[str, str | None] | None:
        """Where an executor with a queue of its own (Slurm) has the run: its job id,
        node and why it waits; None for a run of the local executor or none yet."""
        if not inspect(self.engine).has_table(claims.name):
            return None
        present = {column["name"] for column in inspect(self.engine).get_columns(claims.name)}
        if "job_id" not in present:  # a database no daemon of this version has served
            return None
        query = select(claims.c.job_id, claims.c.node, claims.c.queue_reason).where(
            (claims.c.run_id == run_id) & claims.c.job_id.is_not(None))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {"id": row.job_id, "node": row.node, "reason": row.queue_reason}

    def claim_facts(self, run_ids: Iterable[str]) -> dict[str, ClaimFacts]:
        """What the daemon's claims table says of each run that has a claim, in one
        query (`ls`); a column the table of an older daemon lacks reads as None."""
        ids = list(run_ids)
        if not ids or not inspect(self.engine).has_table(claims.name):
            return {}
        present = {column["name"] for column in inspect(self.engine).get_columns(claims.name)}
        wanted = [name for name in CLAIM_FACTS if name in present]
        query = select(claims.c.run_id, *(claims.c[name] for name in wanted)).where(
            claims.c.run_id.in_(ids))
        with self.engine.connect() as conn:
            return {str(row.run_id): ClaimFacts(**{name: getattr(row, name) for name in wanted})
                    for row in conn.execute(query)}

    def worker_of(self, run_id: str) -> str | None:
        """The worker_id of the daemon that claimed the run last; None if none did."""
        facts = self.claim_facts([run_id]).get(run_id)
        return None if facts is None else facts.worker_id
