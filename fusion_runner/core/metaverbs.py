"""The verbs of a researcher's commands beyond one run: a batch inserted at once, a
rerun and its lineage (`fusion_runner_meta.parent_id`), and pruning ended runs.

`MetaVerbs` is a mixin that `store.Store` combines with the other verbs. The
`runs` table is never changed beyond the client protocol (SPEC §2): rows are
inserted PENDING, and deleted only with a conditional statement that a run
changing meanwhile does not match.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, inspect, select, update
from sqlalchemy.engine import Connection

from fusion_runner.core.clock import utcnow
from fusion_runner.core.schema import claims, events, meta, outputs, results, runs
from fusion_runner.core.status import FINAL_STATUSES, RunStatus

# The daemon's tables that hold rows of a run, deleted with it by `prune_run`.
_RUN_TABLES = ((claims, claims.c.run_id), (outputs, outputs.c.run_id),
               (results, results.c.run_id), (events, events.c.run_id), (meta, meta.c.run_id))
_ENDED = sorted(status.value for status in FINAL_STATUSES)


@dataclass(frozen=True)
class NewRun:
    id: str
    name: str | None
    config_json: str
    template: str
    parent_id: str | None = None  # a rerun's parent, kept in fusion_runner_meta


class MetaVerbs:
    engine: Engine

    def insert_runs(self, batch: Sequence[NewRun]) -> None:
        """Insert every run PENDING in one transaction (all or none), with parents.

        Each gets a `created_at` one microsecond after the one before, so the
        daemon starts them in the order given (oldest first, SPEC §2).
        """
        now = utcnow()
        with self.engine.begin() as conn:
            for index, run in enumerate(batch):
                conn.execute(insert(runs).values(
                    id=run.id, name=run.name, status=RunStatus.PENDING,
                    config_json=run.config_json, template=run.template,
                    created_at=now + timedelta(microseconds=index)))
                if run.parent_id is not None:
                    self._set_parent(conn, run.id, run.parent_id)

    @staticmethod
    def _set_parent(conn: Connection, run_id: str, parent_id: str) -> None:
        """parent_id of the run's meta row; a new row has priority 0 and is not held."""
        changed = conn.execute(update(meta).where(meta.c.run_id == run_id)
                               .values(parent_id=parent_id))
        if changed.rowcount == 0:
            conn.execute(insert(meta).values(run_id=run_id, parent_id=parent_id,
                                             priority=0, held=False))

    def has_meta_table(self) -> bool:
        return inspect(self.engine).has_table(meta.name)

    def parent_of(self, run_id: str) -> str | None:
        """The run this one reran, if any (its row may have been deleted since)."""
        if not self.has_meta_table():
            return None
        query = select(meta.c.parent_id).where(meta.c.run_id == run_id)
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return None if value is None else str(value)

    def reruns_of(self, run_id: str) -> list[str]:
        """The runs that rerun this one, oldest first (deleted ones left out)."""
        if not self.has_meta_table():
            return []
        query = (select(meta.c.run_id).join(runs, runs.c.id == meta.c.run_id)
                 .where(meta.c.parent_id == run_id).order_by(runs.c.created_at, runs.c.id))
        with self.engine.connect() as conn:
            return [str(value) for value in conn.execute(query).scalars()]

    # --- prune -----------------------------------------------------------------

    def prunable(self, cutoff: datetime, statuses: Collection[str] | None = None) -> list[Any]:
        """Ended runs (of `statuses`, final ones only) whose completed_at is before
        `cutoff`, oldest first: id, name, status, completed_at."""
        wanted = _ENDED if statuses is None else [s for s in _ENDED if s in set(statuses)]
        query = (select(runs.c.id, runs.c.name, runs.c.status, runs.c.completed_at)
                 .where(runs.c.status.in_(wanted) & runs.c.completed_at.is_not(None)
                        & (runs.c.completed_at < cutoff))
                 .order_by(runs.c.completed_at, runs.c.id))
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

    def prune_run(
        self, run_id: str, cutoff: datetime, statuses: Collection[str] | None = None
    ) -> bool:
        """Delete the run's row and its rows in the daemon's tables, in one transaction,
        if it is still ended (of `statuses`) before `cutoff`; whether it did.

        The row is deleted first, conditionally (status IN the final ones AND
        completed_at < cutoff): a run that was requeued or changed meanwhile
        does not match, and nothing of it is touched.
        """
        wanted = _ENDED if statuses is None else [s for s in _ENDED if s in set(statuses)]
        present = set(inspect(self.engine).get_table_names())
        statement = delete(runs).where(
            (runs.c.id == run_id) & runs.c.status.in_(wanted)
            & runs.c.completed_at.is_not(None) & (runs.c.completed_at < cutoff))
        with self.engine.begin() as conn:
            if conn.execute(statement).rowcount != 1:
                return False
            for table, column in _RUN_TABLES:
                if table.name in present:
                    conn.execute(delete(table).where(column == run_id))
        return True
