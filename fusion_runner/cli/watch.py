"""`fusion-runner watch`: live progress bars until the watched runs have ended.

It reads the `runs` table, a poll every POLL_SECONDS (and, while runs are
RUNNING, which of them the daemon marked stalled: `RUNNING*`), so it follows
runs of any host and changes nothing: Ctrl-C stops the watching, never a run.
`--once` prints the table (or, with `--json`, the rows) once and exits.
`Display` is also what `demo` draws with; `CtrlC` is how `watch` and `logs -f`
end within a second of a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fusion_runner.cli import view
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import ACTIVE_STATUSES, RunStatus
from fusion_runner.core.store import Store

POLL_SECONDS = 0.2
# After a Ctrl-C: how long the command has to end on its own, then the process to exit.
GRACE_SECONDS = 0.5
EXIT_SECONDS = 0.4
SHOW_CURSOR = b"\x1b[?25h"  # what `Live` hides on a terminal and gives back when stopped


class CtrlC:
    """A block that Ctrl-C ends within about GRACE_SECONDS, whatever it is doing.

    Python acts on a signal only between two bytecodes of the main thread, so
    a Ctrl-C that comes while the main thread waits inside a C call waits with
    it. The client's SQLite waits so: its busy handler sleeps inside sqlite3_step
    for up to the busy timeout (10 s) while another connection holds a lock
    (a writer of a database not in WAL mode, an exclusive locking mode), and a
    WAL reader retries for up to 10 s while the wal-index is busy; a loaded
    machine, which keeps lock holders waiting for a CPU, makes both longer.

    So the signal also wakes a watchdog thread at once, through
    `signal.set_wakeup_fd`, which the C-level handler writes whatever the main
    thread does. Normally the KeyboardInterrupt ends the block first: the code
    in it cleans up (a `Display` stops its Live, the store closes), `message`
    goes to stderr, the exception is swallowed and `interrupted` is set; the
    process then has EXIT_SECONDS to exit. If the block has not ended
    GRACE_SECONDS after the Ctrl-C, the watchdog writes `restore` to stdout
    (SHOW_CURSOR where a Live may be drawing) and `message` to stderr and ends
    the process with os._exit(130), skipping the rest of the clean-up: the
    commands it guards only read the database, which SQLite keeps whole
    whatever the moment a reader stops.

    Unchanged when SIGINT is ignored (`nohup`, a background job) or has a
    handler of someone else's, and off the main thread: then a KeyboardInterrupt
    still ends the block with `message`, if one comes.
    """

    def __init__(self, message: str = "", restore: bytes = b"") -> None:
        self.message = message
        self.restore = restore
        self.interrupted = False
        self._ended = threading.Event()  # the block has ended after a Ctrl-C
        self._ending = threading.Lock()  # held by whichever of the two ends it
        self._writer: int | None = None
        self._previous: tuple[Any, int] = (signal.default_int_handler, -1)

    def __enter__(self) -> CtrlC:
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            return self
        reader, self._writer = os.pipe()
        os.set_blocking(self._writer, False)  # as set_wakeup_fd requires
        previous_fd = signal.set_wakeup_fd(self._writer, warn_on_full_buffer=False)
        self._previous = (signal.signal(signal.SIGINT, self._on_sigint), previous_fd)
        threading.Thread(target=self._watchdog, args=(reader,), name="ctrl-c",
                         daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            if self.interrupted or isinstance(error, KeyboardInterrupt):
                self.interrupted = True
                self._end_here()
        finally:
            self._disarm()
        return isinstance(error, KeyboardInterrupt)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self.interrupted:  # a second Ctrl-C: the first one is being seen to
            self.interrupted = True
            raise KeyboardInterrupt

    def _end_here(self) -> None:
        if not self._ending.acquire(blocking=False):
            threading.Event().wait()  # the watchdog is ending the process right now
        if self.message:
            print(self.message, file=sys.stderr, flush=True)
        self._ended.set()

    def _disarm(self) -> None:
        if self._writer is None:
            return
        handler, previous_fd = self._previous
        # After a Ctrl-C the process is ending: another one must not interrupt that.
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.interrupted else handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(self._writer)  # the watchdog, if still waiting, reads the end of the pipe
        self._writer = None

    def _watchdog(self, reader: int) -> None:
        while signal.SIGINT not in (data := os.read(reader, 64)):
            if not data:  # the block ended without a Ctrl-C
                os.close(reader)
                return
        # The pipe stays open: a second Ctrl-C still has somewhere to write to.
        if not self._ended.wait(GRACE_SECONDS) and self._ending.acquire(blocking=False):
            with contextlib.suppress(OSError):
                if self.restore:
                    os.write(1, self.restore)
                if self.message:
                    os.write(2, f"\n{self.message}\n".encode())
            os._exit(EXIT_INTERRUPTED)
        self._ended.wait(GRACE_SECONDS)  # the block is saying its message
        time.sleep(EXIT_SECONDS)
        os._exit(EXIT_INTERRUPTED)


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
            key = (view.status_label(row.status, row.stalled), view.erlang_text(row),
                   view.iteration_text(row))
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
        self.fetched: dict[str, Any] = {}  # the rows as last read, every column
        self.stalled: dict[str, datetime] = {}  # RUNNING runs marked stalled: since when

    def poll(self) -> None:
        if self.follow_all:
            active = sorted(self.store.select_runs(ACTIVE_STATUSES), key=lambda row: row.created_at)
            self.order += [row.id for row in active if row.id not in self.rows]
        self.fetched = fetched = self.store.get_runs(self.order)
        running = [run_id for run_id, row in fetched.items() if row.status == RunStatus.RUNNING]
        self.stalled = self.store.stalled_of(running) if running else {}
        for run_id in self.order:
            row = fetched.get(run_id)
            if row is not None:
                self.rows[run_id] = view.Snapshot.of(row, self.rows.get(run_id),
                                                     stalled=run_id in self.stalled)
            elif run_id in self.rows:
                self.rows[run_id] = self.rows[run_id].deleted()

    def shown(self) -> list[view.Snapshot]:
        rows = [self.rows[run_id] for run_id in self.order if run_id in self.rows]
        if self.follow_all:
            rows = [row for row in rows if row.status != RunStatus.PENDING]
        return rows

    def footer(self) -> str:
        queued = sum(row.status == RunStatus.PENDING for row in self.rows.values())
        lines = [f"{queued} queued"] if self.follow_all and queued else []
        if any(row.stalled and row.status == RunStatus.RUNNING for row in self.shown()):
            lines.append(view.STALLED_LEGEND)
        return "\n".join(lines)

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


def once(store: Store, ids: Sequence[str] | None, console: Console) -> int:
    """`watch --once`: the table as `run` would draw it now, printed once; always 0."""
    watch = Watch(store, ids)
    watch.poll()
    if not watch.rows:
        console.print("no active runs")
    else:
        console.print(Display._table(watch.shown(), utcnow(), watch.footer()))
    return EXIT_OK


def once_json(store: Store, ids: Sequence[str] | None) -> list[dict[str, Any]]:
    """`watch --once --json`: every watched run as `ls --json` shows it, plus `percent`.

    The runs are those `run` would follow: the ids given, or every PENDING and
    RUNNING run (the queued ones too, which the table only counts), oldest
    first. `percent` is the DONE column as a whole number, null when unknown.
    """
    watch = Watch(store, ids)
    watch.poll()
    shown = []
    for run_id in watch.order:
        row = watch.fetched.get(run_id)
        if row is not None:
            fraction = watch.rows[run_id].fraction
            percent = None if fraction is None else int(fraction * 100)
            shown.append(view.row_json(row) | {"percent": percent,
                                               "stalled_at": view.iso(watch.stalled.get(run_id))})
    return shown
