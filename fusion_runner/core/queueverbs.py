"""The order of the queue: a run's priority and hold, kept in `fusion_runner_meta`.

`QueueVerbs` is a mixin that `store.Store` combines with the other verbs; the
`runs` table is unchanged. A run without a meta row has priority 0 and is not
held. Every claim (`Store.claim_next`, `Store.hold_for_queue`) and `ls`'s queue
places (`ClientVerbs.queue_positions`) take PENDING runs in one order:
`QUEUE_ORDER`, higher priority first, then oldest `created_at`, then id; a held
run is skipped (`NOT_HELD`) until released.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import Engine, false, func, insert, inspect, or_, select, update
from sqlalchemy.exc import IntegrityError

from fusion_runner.core.errors import SchemaError
from fusion_runner.core.schema import meta, runs
from fusion_runner.core.status import RunStatus

# runs with their meta row, if any (a LEFT OUTER JOIN: most runs have none).
QUEUE_FROM = runs.outerjoin(meta, meta.c.run_id == runs.c.id)
PRIORITY = func.coalesce(meta.c.priority, 0)
QUEUE_ORDER = (PRIORITY.desc(), runs.c.created_at, runs.c.id)
NOT_HELD = or_(meta.c.held.is_(None), meta.c.held == false())
HELD = "held"  # a held run's place in the queue, as `ls` shows it


class Change(enum.Enum):
    DONE = "done"  # held (released) now
    ALREADY = "already"  # it was held (not held) already
    NOT_PENDING = "not pending"  # only a PENDING run is held
    UNKNOWN = "unknown"  # no run has that id (deleted meanwhile)


@dataclass(frozen=True)
class HoldResult:
    change: Change
    status: str | None  # the run's status as the verb saw it


class QueueVerbs:
    engine: Engine

    def set_priority(self, run_id: str, priority: int) -> None:
        """The run's priority (higher first), its parent and hold kept."""
        self._upsert_meta(run_id, priority=priority)

    def priorities(self, run_ids: list[str]) -> dict[str, tuple[int, bool]]:
        """(priority, held) of those of `run_ids` with a meta row."""
        if not run_ids or not inspect(self.engine).has_table(meta.name):
            return {}
        query = select(meta.c.run_id, meta.c.priority, meta.c.held).where(
            meta.c.run_id.in_(run_ids))
        with self.engine.connect() as conn:
            return {str(row.run_id): (int(row.priority), bool(row.held))
                    for row in conn.execute(query)}

    def hold(self, run_id: str) -> HoldResult:
        """Hold a PENDING run: no daemon claims it until `release`.

        A run a daemon claims while this is written is not held: the status is
        read again after the write, and the hold taken back if it is no longer
        PENDING (a run held for an executor's queue stays there).
        """
        status = self._status(run_id)
        if status is None:
            return HoldResult(Change.UNKNOWN, None)
        if status != RunStatus.PENDING:
            return HoldResult(Change.NOT_PENDING, status)
        if self.priorities([run_id]).get(run_id, (0, False))[1]:
            return HoldResult(Change.ALREADY, status)
        self._upsert_meta(run_id, held=True)
        after = self._status(run_id)
        if after != RunStatus.PENDING:
            self._upsert_meta(run_id, held=False)
            return HoldResult(Change.UNKNOWN if after is None else Change.NOT_PENDING, after)
        return HoldResult(Change.DONE, status)

    def release(self, run_id: str) -> HoldResult:
        """Let a held run be claimed again, in its place (priority, age)."""
        status = self._status(run_id)
        if status is None:
            return HoldResult(Change.UNKNOWN, None)
        if not self.priorities([run_id]).get(run_id, (0, False))[1]:
            return HoldResult(Change.ALREADY, status)
        self._upsert_meta(run_id, held=False)
        return HoldResult(Change.DONE, status)

    def _status(self, run_id: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
        return None if value is None else str(value)

    def _upsert_meta(self, run_id: str, **values: object) -> None:
        """Set `values` in the run's meta row, making it (priority 0, not held) if none."""
        if not inspect(self.engine).has_table(meta.name):
            raise SchemaError(f"the database has no {meta.name} table yet: start a daemon "
                              "of this version on it once")
        row = {"priority": 0, "held": False, "parent_id": None} | values
        for _ in range(2):  # another client inserted it between the two: update it then
            with self.engine.begin() as conn:
                changed = conn.execute(update(meta).where(meta.c.run_id == run_id)
                                       .values(**values))
                if changed.rowcount == 1:
                    return
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(meta).values(run_id=run_id, **row))
                return
            except IntegrityError:
                continue
