"""How a run looks on a terminal: one line with status, Erlang k/N, iteration i/M, a bar."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol

BAR_WIDTH = 20


class RunRow(Protocol):
    id: str
    name: str | None
    status: str
    config_json: str
    started_at: datetime | None
    completed_at: datetime | None
    current_erlang: float | None
    total_erlangs: int | None
    current_iteration: int | None
    total_iterations: int | None


def erlang_index(row: RunRow) -> int | None:
    """1-based position of the current Erlang load in the sweep, from the run's config."""
    if row.current_erlang is None:
        return None
    try:
        general: dict[str, Any] = json.loads(row.config_json)["general_settings"]
        start, step = float(general["erlang_start"]), float(general["erlang_step"])
    except (ValueError, KeyError, TypeError):
        return None
    return round((row.current_erlang - start) / step) + 1 if step > 0 else None


def fraction_done(row: RunRow) -> float:
    if row.status == "COMPLETED":
        return 1.0
    index, iteration = erlang_index(row), row.current_iteration
    if not (index and iteration and row.total_erlangs and row.total_iterations):
        return 0.0
    done = (index - 1) * row.total_iterations + iteration
    return max(0.0, min(1.0, done / (row.total_erlangs * row.total_iterations)))


def progress_line(row: RunRow, now: datetime) -> str:
    """e.g. `3f2a9c1b7d4e  load-300  RUNNING    Erlang 2/3  iter 1/2  [######    ]  4.2s`."""
    index = erlang_index(row)
    erlang = f"Erlang {index or '?'}/{row.total_erlangs or '?'}"
    iteration = f"iter {row.current_iteration or 0}/{row.total_iterations or '?'}"
    filled = round(fraction_done(row) * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return (f"{row.id}  {(row.name or '')[:12]:<12}  {row.status:<9}  {erlang:<10}  "
            f"{iteration:<9}  [{bar}]  {elapsed(row, now)}")


def elapsed(row: RunRow, now: datetime) -> str:
    if row.started_at is None:
        return ""
    seconds = ((row.completed_at or now) - row.started_at).total_seconds()
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
