"""watch.run and watch.Display against a scripted fake of the store's two reads."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import pytest
from rich.console import Console

from fusion_runner.cli import view, watch
from fusion_runner.core.clock import utcnow
from fusion_runner.core.store import Store


@dataclass(frozen=True)
class FakeRow:
    id: str
    status: str
    created_at: datetime
    name: str | None = "run"
    config_json: str = "{}"
    pid: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    current_erlang: float | None = None
    total_erlangs: int | None = None
    current_iteration: int | None = None
    total_iterations: int | None = None


def queued(run_id: str, age: float) -> FakeRow:
    return FakeRow(run_id, "PENDING", utcnow() - timedelta(seconds=age))


def started(row: FakeRow, **columns: Any) -> FakeRow:
    return replace(row, status="RUNNING", pid=1, started_at=utcnow(), **columns)


def ended(row: FakeRow, status: str) -> FakeRow:
    return replace(row, status=status, completed_at=utcnow())


class ScriptedStore:
    """The table as it is at each poll; every sleep moves on to the next state."""

    def __init__(self, *states: list[FakeRow]) -> None:
        self.states = list(states)
        self.at = 0
        self.sleeps = 0

    @property
    def table(self) -> dict[str, FakeRow]:
        return {row.id: row for row in self.states[self.at]}

    def select_runs(self, statuses: Iterable[str] | None = None,
                    limit: int | None = None) -> list[FakeRow]:
        wanted = set(statuses or ())
        rows = sorted(self.table.values(), key=lambda row: row.created_at, reverse=True)
        return [row for row in rows if row.status in wanted]

    def get_runs(self, run_ids: Iterable[str]) -> dict[str, FakeRow]:
        return {run_id: self.table[run_id] for run_id in run_ids if run_id in self.table}

    def stalled_of(self, run_ids: Iterable[str]) -> dict[str, datetime]:
        """Runs marked stalled: those named `stalled*` (the daemon's claims table)."""
        return {run_id: utcnow() for run_id in run_ids if run_id.startswith("stalled")}

    def sleep(self, _seconds: float) -> None:
        self.sleeps += 1
        if self.at + 1 >= len(self.states):
            raise AssertionError("watch polled on after the last state")
        self.at += 1


def watch_run(fake: ScriptedStore, ids: list[str] | None) -> tuple[int, list[str]]:
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    status = watch.run(cast(Store, fake), ids, console, sleep=fake.sleep)
    return status, out.getvalue().splitlines()


def test_without_ids_a_run_shows_once_started_and_the_watch_ends_with_the_last() -> None:
    a, b = queued("aaaaaaaaaaaa", 2), queued("bbbbbbbbbbbb", 1)
    a_running = started(a, current_erlang=1.0, current_iteration=1, total_iterations=2)
    fake = ScriptedStore(
        [a_running, b],
        [ended(a_running, "COMPLETED"), started(b)],
        [ended(a_running, "COMPLETED"), ended(started(b), "COMPLETED")],
    )

    status, lines = watch_run(fake, None)

    assert status == 0
    # Off a terminal: a line per change, then the final table and a summary.
    changes = lines[: lines.index(next(line for line in lines if line.startswith("ID ")))]
    assert [line.split()[:3] for line in changes] == [
        ["aaaaaaaaaaaa", "run", "RUNNING"],
        ["aaaaaaaaaaaa", "run", "COMPLETED"],
        ["bbbbbbbbbbbb", "run", "RUNNING"],
        ["bbbbbbbbbbbb", "run", "COMPLETED"],
    ]
    assert lines[-1] == "2 runs: 2 COMPLETED"
    assert all(len(line) <= 80 for line in lines)


def test_with_ids_exits_1_unless_every_run_completed_and_shows_a_deleted_run() -> None:
    a, b = started(queued("aaaaaaaaaaaa", 2)), started(queued("bbbbbbbbbbbb", 1))
    fake = ScriptedStore([a, b], [ended(a, "COMPLETED")])  # b's row is deleted

    status, lines = watch_run(fake, [a.id, b.id])

    assert status == 1
    assert any(line.split()[:3] == [b.id, "run", "DELETED"] for line in lines)
    assert lines[-1] == "2 runs: 1 COMPLETED, 1 DELETED"


def test_a_cancelled_run_is_watched_until_its_processes_are_gone() -> None:
    a = started(queued("aaaaaaaaaaaa", 1))
    cancelling = replace(a, status="CANCELLED")
    fake = ScriptedStore([a], [cancelling], [cancelling], [ended(a, "CANCELLED")])

    status, lines = watch_run(fake, [a.id])

    assert status == 1 and fake.sleeps == 3
    assert lines[-1] == "1 run: 1 CANCELLED"


def test_runs_already_ended_are_drawn_once_and_nothing_is_polled_again() -> None:
    a = ended(started(queued("aaaaaaaaaaaa", 1)), "COMPLETED")
    fake = ScriptedStore([a])

    status, lines = watch_run(fake, [a.id])

    assert (status, fake.sleeps) == (0, 0)
    assert lines[-1] == "1 run: 1 COMPLETED"


def test_nothing_active_says_so_and_exits_0() -> None:
    fake = ScriptedStore([ended(started(queued("aaaaaaaaaaaa", 1)), "FAILED")])

    assert watch_run(fake, None) == (0, ["no active runs"])


@pytest.mark.parametrize("rows", [1, 3])
def test_on_a_terminal_the_table_is_redrawn_in_place_with_one_bar_per_run(rows: int) -> None:
    runs = [started(queued(f"{n:012x}", rows - n), current_erlang=1.0, total_erlangs=1,
                    current_iteration=1, total_iterations=4) for n in range(rows)]
    fake = ScriptedStore(runs, [ended(row, "COMPLETED") for row in runs])
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system="standard")

    status = watch.run(cast(Store, fake), None, console, sleep=fake.sleep)

    text = out.getvalue()
    assert status == 0
    assert "\x1b[1A" in text and "\x1b[2K" in text  # moved up and redrew
    assert "\x1b[36mRUNNING" in text and "\x1b[32mCOMPLETED" in text
    last_frame, summary = text.rsplit("ID ", 1)[1].split("\x1b[?25h")  # cursor back on
    assert summary == f"{rows} run{'s' if rows > 1 else ''}: {rows} COMPLETED\n"
    assert last_frame.count("COMPLETED") == rows
    assert sum("━" in line for line in last_frame.splitlines()) == rows


def test_a_stalled_running_run_is_shown_running_with_a_mark_and_a_legend() -> None:
    store = cast(Store, ScriptedStore([started(queued("stalled1", 2)),
                                       started(queued("fine", 1))]))
    buffer = io.StringIO()
    watch.once(store, None, Console(file=buffer, width=100, force_terminal=False))
    text = buffer.getvalue()
    assert text.count("RUNNING*") == 1 and view.STALLED_LEGEND in text
