"""The verbs of the results table (`fusion_runner_results`): one row per run and Erlang point.

`ResultVerbs` is a mixin that `store.Store` combines with the other verbs. The
daemon that owns a run is its only writer (each `erlang_complete` progress
event, then the run's `output/*_erlang.json` when it ends), so an update, then
an insert where it changed nothing, needs no lock against another writer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update

from fusion_runner.core.clock import utcnow
from fusion_runner.core.schema import results


@dataclass(frozen=True)
class ResultRow:
    """One Erlang point's result as the table holds it (None: not known)."""

    run_id: str
    erlang: float
    blocking_mean: float | None
    blocking_ci: float | None  # the interval's half width
    iterations: int | None


class ResultVerbs:
    engine: Engine

    def record_results(self, run_id: str, points: Iterable[ResultRow]) -> int:
        """Upsert the points of `run_id` in one transaction; how many were given.

        A value the point does not know (None) leaves the one stored, so a
        results file not yet complete does not erase what an event said.
        """
        count = 0
        now = utcnow()
        with self.engine.begin() as conn:
            for point in points:
                count += 1
                where = (results.c.run_id == run_id) & (results.c.erlang == point.erlang)
                known = {
                    name: value
                    for name, value in (("blocking_mean", point.blocking_mean),
                                        ("blocking_ci", point.blocking_ci),
                                        ("iterations", point.iterations))
                    if value is not None
                }
                changed = conn.execute(update(results).where(where).values(
                    recorded_at=now, **known)).rowcount
                if changed == 0:
                    conn.execute(insert(results).values(
                        run_id=run_id, erlang=point.erlang, blocking_mean=point.blocking_mean,
                        blocking_ci=point.blocking_ci, iterations=point.iterations,
                        recorded_at=now))
        return count

    def run_results(self, run_ids: Iterable[str]) -> dict[str, list[ResultRow]]:
        """Each run's points, by Erlang; a run with none is absent."""
        ids = list(run_ids)
        found: dict[str, list[ResultRow]] = {}
        if not ids:
            return found
        query = (
            select(results.c.run_id, results.c.erlang, results.c.blocking_mean,
                   results.c.blocking_ci, results.c.iterations)
            .where(results.c.run_id.in_(ids))
            .order_by(results.c.run_id, results.c.erlang)
        )
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found.setdefault(row.run_id, []).append(ResultRow(
                    row.run_id, float(row.erlang), row.blocking_mean, row.blocking_ci,
                    row.iterations))
        return found
