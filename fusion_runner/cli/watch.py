"""`fusion-runner watch`: live progress bars until the watched runs have ended.

It reads only the `runs` table, a poll every POLL_SECONDS, so it follows runs
of any host and changes nothing: Ctrl-C stops the watching, never a run.
`Display` is also what `demo` draws with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fusion_runner.cli import view
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import ACTIVE_STATUSES, RunStatus
from fusion_runner.core.store import Store

POLL_SECONDS = 0.2


class Display:
    """On a terminal, the runs table redrawn in place; elsewhere, a line per change.

    Off a terminal (a pipe, a log file) a run gets a line when its status,
    Erlang or iteration changes, and the final table is printed at the end.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self.shown: dict[str, tuple[str, str, str]] = {}
        self.last: tuple[list[view.Snapshot], datetime, str] = ([], utcnow(), "")

    def __enter__(self) -> Display:
        if self.console.is_terminal and not self.console.is_dumb_terminal:
            self.live = Live(console=self.console, auto_refresh=False,
                             redirect_stdout=False, redirect_stderr=False)
            self.live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()  # leaves the last table on the screen
        elif kind is None and self.last[0]:
            rows, now, footer = self.last
            self.console.print(self._table(rows, now, footer))

    def update(self, rows: Sequence[view.Snapshot], now: datetime, footer: str = "") -> None:
        self.last = (list(rows), now, footer)
        if self.live is not None:
            self.live.update(self._table(rows, now, footer), refresh=True)
            return
        for row in rows:
            key = (row.status, view.erlang_text(row), view.iteration_text(row))
            if self.shown.get(row.id) != key:
                self.shown[row.id] = key
                self.console.print(Text(view.summary_line(row, now)), soft_wrap=True)

    def note(self, text: str) -> None:
        """A line above the table (on a terminal) or between the change lines."""
        self.console.print(Text(text), soft_wrap=True)

    @staticmethod
    def _table(rows: Sequence[view.Snapshot], now: datetime, footer: str) -> Table:
        table = view.runs_table(list(rows), now)
        if footer:
            table.caption, table.caption_justify = footer, "left"
        return table


class Watch:
    """The runs being watched: the ids given, or every run active now or later.

    With ids, each is shown from the start. Without, a run is shown once it has
    started (queued ones are counted below the table) and stays until the end.
    """

    def __init__(self, store: Store, ids: Sequence[str] | None) -> None:
        self.store = store
        self.follow_all = ids is None
        self.order: list[str] = list(ids or [])
        self.rows: dict[str, view.Snapshot] = {}

    def poll(self) -> None:
        if self.follow_all:
            active = sorted(self.store.select_runs(ACTIVE_STATUSES), key=lambda row: row.created_at)
            self.order += [row.id for row in active if row.id not in self.rows]
        fetched = self.store.get_runs(self.order)
        for run_id in self.order:
            row = fetched.get(run_id)
            if row is not None:
                self.rows[run_id] = view.Snapshot.of(row, self.rows.get(run_id))
            elif run_id in self.rows:
                self.rows[run_id] = self.rows[run_id].deleted()

    def shown(self) -> list[view.Snapshot]:
        rows = [self.rows[run_id] for run_id in self.order if run_id in self.rows]
        if self.follow_all:
            rows = [row for row in rows if row.status != RunStatus.PENDING]
        return rows

    def footer(self) -> str:
        queued = sum(row.status == RunStatus.PENDING for row in self.rows.values())
        return f"{queued} queued" if self.follow_all and queued else ""

    def ended(self) -> bool:
        return all(view.has_ended(row) for row in self.rows.values())

    def summary(self) -> tuple[str, int]:
        """A line such as `3 runs: 2 COMPLETED, 1 FAILED` and the exit status."""
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        parts = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        total = len(self.rows)
        status = EXIT_OK if counts.get(RunStatus.COMPLETED, 0) == total else EXIT_FAILURE
        return f"{total} run{'s' if total != 1 else ''}: {parts}", status


def run(
    store: Store, ids: Sequence[str] | None, console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Draw until every watched run has ended: 0 if all COMPLETED, else 1."""
    watch = Watch(store, ids)
    watch.poll()
    if not watch.rows:
        console.print("no active runs")
        return EXIT_OK
    with Display(console) as display:
        while True:
            display.update(watch.shown(), utcnow(), watch.footer())
            if watch.ended():
                break
            sleep(POLL_SECONDS)
            watch.poll()
    line, status = watch.summary()
    console.print(Text(line))
    return status
