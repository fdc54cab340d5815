"""How runs look on a terminal: progress, times, and the table `watch` and `demo` draw.

Pure: it reads rows (anything with the columns below) and a clock value, and
returns text or rich renderables; nothing here touches the database or a file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.core.outcome import ExitRecord
from fusion_runner.core.status import RunStatus, is_final

DELETED = "DELETED"  # shown for a watched run whose row was deleted; no status of the table
STATUS_STYLES = {
    RunStatus.PENDING: "dim",
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "bold red",
    RunStatus.CANCELLED: "yellow",
    DELETED: "magenta",
}
UNFINISHED_AT_MOST = 0.99
BAR_STYLES = {RunStatus.FAILED: "red", RunStatus.CANCELLED: "yellow", DELETED: "magenta"}
# A RUNNING run whose progress the daemon marked stalled (stall_after_seconds).
STALLED_MARK = "*"
STALLED_LEGEND = "* stalled: its progress has not moved for the daemon's stall_after_seconds"


class RunRow(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def config_json(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def current_erlang(self) -> float | None: ...
    @property
    def total_erlangs(self) -> int | None: ...
    @property
    def current_iteration(self) -> int | None: ...
    @property
    def total_iterations(self) -> int | None: ...


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What is shown of a run: its display columns and the share of it done.

    The row holds only the latest progress event, and where Erlang points run
    in parallel (the reference simulation's do) the estimate from it jumps back
    and forth; given the previous snapshot, the share shown never goes back,
    and it reaches 100 % only when the run has COMPLETED. A snapshot also keeps
    a run on screen after its row is deleted.
    """

    id: str
    name: str | None
    status: str
    config_json: str
    pid: int | None
    started_at: datetime | None
    completed_at: datetime | None
    current_erlang: float | None
    total_erlangs: int | None
    current_iteration: int | None
    total_iterations: int | None
    fraction: float | None = None
    stalled: bool = False  # its progress marked stalled by the daemon

    @classmethod
    def of(cls, row: RunRow, previous: Snapshot | None = None, stalled: bool = False
           ) -> Snapshot:
        columns = {field.name: getattr(row, field.name) for field in dataclasses.fields(cls)
                   if field.name not in ("fraction", "stalled")}
        fraction = fraction_done(row)
        if row.status != RunStatus.COMPLETED:
            if previous is not None and previous.fraction is not None:
                fraction = max(fraction or 0.0, previous.fraction)
            if fraction is not None:
                fraction = min(fraction, UNFINISHED_AT_MOST)
        return cls(**columns, fraction=fraction, stalled=stalled)

    def deleted(self) -> Snapshot:
        return dataclasses.replace(self, status=DELETED)


def has_ended(row: RunRow) -> bool:
    """Final, and no process of it left: completed_at set, or it never had one."""
    if row.status == DELETED:
        return True
    return is_final(row.status) and (row.completed_at is not None or row.pid is None)


# --- progress ---------------------------------------------------------------------


def erlang_index(row: RunRow) -> int | None:
    """1-based position of the current Erlang load in the sweep, from the run's config."""
    if row.current_erlang is None:
        return None
    if row.total_erlangs == 1:
        return 1
    try:
        general: dict[str, Any] = json.loads(row.config_json)["general_settings"]
        start, step = float(general["erlang_start"]), float(general["erlang_step"])
    except (ValueError, KeyError, TypeError):
        return None
    return round((row.current_erlang - start) / step) + 1 if step > 0 else None


def fraction_done(row: RunRow) -> float | None:
    """Share of the sweep's iterations finished, or None when the row cannot tell."""
    if row.status == RunStatus.COMPLETED:
        return 1.0
    iteration, iterations = row.current_iteration, row.total_iterations
    if iteration is None or not iterations:
        return None
    index = erlang_index(row)
    if index is None or not row.total_erlangs:
        return None
    # `erlang_start` moves current_erlang on but leaves current_iteration at
    # the last Erlang's final one, so i == M may mean "none of this Erlang yet":
    # counted as such, the estimate is never ahead of the run.
    done = (index - 1) * iterations + (iteration if iteration < iterations else 0)
    return max(0.0, min(1.0, done / (row.total_erlangs * iterations)))


def elapsed_seconds(row: RunRow, now: datetime) -> float | None:
    if row.started_at is None:
        return None
    return max(0.0, ((row.completed_at or now) - row.started_at).total_seconds())


def remaining_seconds(row: Snapshot, now: datetime) -> float | None:
    """What is left of a running run at the pace it has gone so far."""
    fraction, elapsed = row.fraction, elapsed_seconds(row, now)
    if row.status != RunStatus.RUNNING or not fraction or elapsed is None:
        return None
    return elapsed * (1 - fraction) / fraction


def duration(seconds: float | None) -> str:
    """`4.2s`, `3m05s`, `2h07m`; `-` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def erlang_text(row: RunRow) -> str:
    if row.current_erlang is None and row.total_erlangs is None:
        return "-"
    return f"{erlang_index(row) or '?'}/{row.total_erlangs or '?'}"


def iteration_text(row: RunRow) -> str:
    if row.current_iteration is None and row.total_iterations is None:
        return "-"
    return f"{row.current_iteration or 0}/{row.total_iterations or '?'}"


def percent_text(row: Snapshot) -> str:
    fraction = row.fraction
    return "-" if fraction is None else f"{int(fraction * 100)}%"


def summary_line(row: Snapshot, now: datetime) -> str:
    """The table's row as one plain line, for output that is not a terminal."""
    name = row.name or ""
    name = name if len(name) <= 14 else name[:13] + "…"
    status = status_label(row.status, row.stalled)
    return (f"{row.id:<12}  {name:<14}  {status:<9}  E {erlang_text(row):>5}  "
            f"it {iteration_text(row):>7}  {percent_text(row):>4}  "
            f"{duration(elapsed_seconds(row, now)):>6}")


def local_time(value: datetime | None, layout: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
    """A naive UTC timestamp of the runs table, in the local time zone."""
    if value is None:
        return "-"
    return value.replace(tzinfo=UTC).astimezone().strftime(layout)


def iso(value: datetime | None) -> str | None:
    """A naive UTC timestamp of the runs table in ISO 8601 with its offset."""
    return None if value is None else value.replace(tzinfo=UTC).isoformat()


def row_json(row: Any) -> dict[str, Any]:
    """Every SPEC §1 column under its own name; timestamps in ISO 8601."""
    values = {column: getattr(row, column) for column in RUNS_COLUMNS}
    return {
        column: iso(value) if isinstance(value, datetime) else value
        for column, value in values.items()
    }


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status.removesuffix(STALLED_MARK), ""))


def status_label(status: str, stalled: bool) -> str:
    """The status as shown: `RUNNING*` for a running run whose progress is stalled."""
    return status + STALLED_MARK if stalled and status == RunStatus.RUNNING else status


# --- the table ------------------------------------------------------------------------


def runs_table(rows: Sequence[Snapshot], now: datetime) -> Table:
    """One line per run: id, name, status, Erlang k/N, iteration i/M, bar, %, time, left.

    Fits 80 columns: only the name and the bar stretch, and a long name is cut
    with an ellipsis.
    """
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, expand=True,
                  header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=12)
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", ratio=1, max_width=24)
    table.add_column("STATUS", no_wrap=True, min_width=9)
    # Widths for the usual values (`10/20`, `100/200`, `59m59s`), so that the
    # layout holds still from one redraw to the next.
    table.add_column("ERL", no_wrap=True, justify="right", min_width=5)
    table.add_column("ITER", no_wrap=True, justify="right", min_width=7)
    table.add_column("", no_wrap=True, ratio=1, min_width=8)
    table.add_column("DONE", no_wrap=True, justify="right", min_width=4)
    table.add_column("TIME", no_wrap=True, justify="right", min_width=6)
    table.add_column("LEFT", no_wrap=True, justify="right", min_width=7)
    for row in rows:
        left = remaining_seconds(row, now)
        table.add_row(
            Text(row.id), Text(row.name or ""), status_text(status_label(row.status,
                                                                         row.stalled)),
            Text(erlang_text(row)), Text(iteration_text(row)), progress_bar(row),
            Text(percent_text(row)), Text(duration(elapsed_seconds(row, now))),
            Text("-" if left is None else "~" + duration(left)),
        )  # fmt: skip
    return table


def progress_bar(row: Snapshot) -> ProgressBar:
    # Unknown progress is an empty bar (DONE says `-`): a pulse would read as full
    # wherever there is no colour.
    style = BAR_STYLES.get(row.status, "cyan")
    return ProgressBar(total=1.0, completed=row.fraction or 0.0,
                       complete_style=style, finished_style="green")


# --- what an ended run used, and where a pending one stands (`ls`) ----------------------


def usage_of(record: ExitRecord | None) -> tuple[float | None, int | None]:
    """CPU seconds (user + system, the simulation's children included) and peak RSS in
    bytes from the shim's exit record; both None when nothing was measured: no record,
    or none of the simulation's processes was reaped (it could not start)."""
    if record is None or record.max_rss_kib <= 0:
        return None, None
    return record.cpu_seconds, record.max_rss_kib * 1024  # ru_maxrss is in KiB on Linux


def cpu_text(seconds: float | None) -> str:
    """CPU time as `duration` shows times; `<0.1s` for a little that would read as 0.0s."""
    if seconds is not None and 0 < seconds < 0.05:
        return "<0.1s"
    return duration(seconds)


def memory_text(size: int | None) -> str:
    """Bytes as `ps` and `sacct` show memory, 1024-based, at most 5 characters:
    `512B`, `900K`, `9.5M`, `512M`, `1.2G`; `-` when unknown."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size}B"
    value = size / 1024
    for unit in "KMGT":
        if value < 9.95:
            return f"{value:.1f}{unit}"
        if value < 1023.5:
            return f"{value:.0f}{unit}"
        value /= 1024
    return f"{value:.1f}P" if value < 9.95 else f"{value:.0f}P"


def queue_text(position: int | str | None) -> str:
    """A pending run's place in the daemon's queue: `#1` is the run it starts next;
    `held` while a client holds it."""
    if isinstance(position, str):
        return position
    return "-" if position is None else f"#{position}"
