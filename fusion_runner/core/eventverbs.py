"""The verbs of a run's history (`fusion_runner_events`) and of its stall mark
(`fusion_runner_claims.stalled_at`): what the daemon records, what `show`, `ls`
and `watch` read.

`EventVerbs` is a mixin that `store.Store` combines with the other verbs.

The daemon records a handful of events per run (claimed, started, cancel seen,
signals, exited, final, stalled, ...), never one per progress line. It buffers
them in memory and writes each pass's with one executemany (`add_events`),
after the state changes they describe have committed: a database error then
loses no state change, and the buffer is written by a later pass. A worker
declared lost is recorded in the transaction that declares it
(`insert_events`, from workerverbs), so that exactly one daemon records it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, inspect, select, update
from sqlalchemy.engine import Connection

from fusion_runner.core.schema import claims, events

# Bounds of what one event holds: the detail is a line, never a log.
MAX_DETAIL = 500
MAX_EVENT = 40
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")  # NUL (PostgreSQL), ...


def event_row(
    run_id: str, event: str, detail: str | None, worker_id: str | None, at: datetime
) -> dict[str, Any]:
    """One event as `add_events` writes it: its detail made storable and bounded."""
    if detail is not None:
        detail = _UNSTORABLE.sub("\ufffd", detail)
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 3] + "..."
    return {"run_id": run_id, "at": at, "worker_id": worker_id,
            "event": event[:MAX_EVENT], "detail": detail}


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Events in a transaction of the caller's: one executemany."""
    if rows:
        conn.execute(insert(events), list(rows))


class EventVerbs:
    engine: Engine
    # Whether the database has claims.stalled_at (a daemon of this version made
    # it); only a yes is kept: a daemon may upgrade the tables while a client runs.
    _knows_stalls: bool = False

    # --- the daemon's ------------------------------------------------------------

    def add_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write events made by `event_row`, in their order, in one statement."""
        with self.engine.begin() as conn:
            insert_events(conn, rows)

    def set_stalled(self, run_id: str, stalled_at: datetime | None) -> None:
        """Mark a run's progress stalled since `stalled_at`; None clears the mark."""
        with self.engine.begin() as conn:
            conn.execute(update(claims).where(claims.c.run_id == run_id)
                         .values(stalled_at=stalled_at))

    # --- for the client commands ---------------------------------------------------

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """A run's events, oldest first: at, worker_id, event, detail; none when no
        daemon of this version has made the table yet."""
        if not inspect(self.engine).has_table(events.name):
            return []
        query = (select(events.c.at, events.c.worker_id, events.c.event, events.c.detail)
                 .where(events.c.run_id == run_id).order_by(events.c.at, events.c.id))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def stalled_of(self, run_ids: Iterable[str]) -> dict[str, datetime]:
        """Since when each run's progress is marked stalled, for the runs marked."""
        ids = list(run_ids)
        if not ids or not self._has_stall_column():
            return {}
        query = select(claims.c.run_id, claims.c.stalled_at).where(
            claims.c.run_id.in_(ids) & claims.c.stalled_at.is_not(None))
        with self.engine.connect() as conn:
            return {str(row.run_id): row.stalled_at for row in conn.execute(query)}

    def _has_stall_column(self) -> bool:
        if not self._knows_stalls:
            inspector = inspect(self.engine)
            self._knows_stalls = inspector.has_table(claims.name) and "stalled_at" in {
                column["name"] for column in inspector.get_columns(claims.name)}
        return self._knows_stalls
