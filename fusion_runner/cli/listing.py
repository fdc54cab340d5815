"""`fusion-runner ls`: runs newest first, as `sacct` and `squeue` would show them.

Besides the row's progress and times: for an ended run, the CPU time and peak
RSS that its shim measured (exit.json); for a pending run, its place in the
daemon's queue, `#1` being the run the daemon starts next.

On 80 columns (what a pipe gets): ID NAME STATUS DONE TIME CPU MEM ERROR,
where DONE is the share done, or `#N` for a pending run. A wider terminal
adds STARTED, then WORKER (the daemon that claimed the run), then gives half
of what is left to the names. `--json` always has `worker_id`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from fusion_runner.cli import lookup, view
from fusion_runner.cli.commands import console, print_json
from fusion_runner.cli.exitcodes import EXIT_OK
from fusion_runner.core import clientdb, exitrecord
from fusion_runner.core import config as config_module
from fusion_runner.core.clientverbs import ClaimFacts
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import ACTIVE_STATUSES, RunStatus
from fusion_runner.core.store import Store

WIDTH = 80
NAME_WIDTH, MIN_NAME_WIDTH = 12, 6  # at 80 columns; when numbers need more room
STARTED_WIDTH = 11 + 2  # `05-01 12:00` and the gap before the next column
# The columns of numbers, each as wide as its usual values: `100%`, `59m59s`, `512M`.
NUMBERS = {"DONE": 4, "TIME": 6, "CPU": 6, "MEM": 5}


@dataclasses.dataclass(frozen=True)
class Extras:
    """What `ls` shows of a run beyond its row: null (blank) when unknown or not applicable."""

    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    queue_position: int | str | None = None  # "held": a client holds it
    worker_id: str | None = None  # the daemon that claimed it (fusion-runner workers)
    node: str | None = None  # where its Slurm job runs or ran (executor = "slurm")
    # Since when its progress is marked stalled (ISO 8601); STATUS shows `RUNNING*`.
    stalled_at: str | None = None


def cmd_ls(args: argparse.Namespace, settings: config_module.Config) -> int:
    statuses = sorted({s for group in args.status for s in group}) if args.status else None
    limit = args.limit or None
    with lookup.open_store(settings) as store:
        rows = store.select_runs(statuses, limit)
        total = store.count_runs(statuses) if limit is not None and len(rows) == limit else 0
        extras = gather_extras(store, settings, rows)
    if args.json:
        print_json([view.row_json(row) | dataclasses.asdict(extras[row.id]) for row in rows])
        return EXIT_OK
    out = console()
    if not rows:
        out.print("no runs" + (f" with status {', '.join(statuses)}" if statuses else ""))
        return EXIT_OK
    out.print(ls_table(rows, utcnow(), out.width, extras))
    if any(row.status == RunStatus.RUNNING and extras[row.id].stalled_at for row in rows):
        out.print(Text(view.STALLED_LEGEND, style="dim"))
    if total > len(rows):
        out.print(Text(f"{len(rows)} of {total} runs; --limit 0 lists them all", style="dim"))
    return EXIT_OK


def gather_extras(
    store: Store, settings: config_module.Config, rows: Sequence[Any]
) -> dict[str, Extras]:
    """Each row's Extras: the exit record of a run that has ended (any status but PENDING
    and RUNNING), the queue place of a PENDING one (all of them in one query)."""
    pending = [row.id for row in rows if row.status == RunStatus.PENDING]
    positions = store.queue_positions(pending) if pending else {}
    # One query of the daemon's claims for all rows: worker, node, stall, folder.
    claimed = store.claim_facts(row.id for row in rows)
    extras: dict[str, Extras] = {}
    for row in rows:
        facts = claimed.get(row.id, ClaimFacts())
        cpu_seconds = peak_rss = None
        if row.status not in ACTIVE_STATUSES:
            paths = clientdb.paths_for(row.id, facts.run_dir, settings.runs_dir)
            record = exitrecord.read(paths.exit_record) if paths is not None else None
            cpu_seconds, peak_rss = view.usage_of(record)
        extras[row.id] = Extras(cpu_seconds, peak_rss, positions.get(row.id),
                                facts.worker_id, facts.node, view.iso(facts.stalled_at))
    return extras


def ls_table(
    rows: Sequence[Any], now: datetime, width: int = WIDTH,
    extras: Mapping[str, Extras] | None = None,
) -> Table:
    """id, name, status, progress or queue place, [started,] duration, CPU, peak memory,
    error's first line; fits `width` columns, 80 at least."""
    extras = extras or {}
    lines = [cells(row, now, extras.get(row.id, Extras())) for row in rows]
    # A number wider than its column's usual width (`#1000`, `123h04m`) takes its room
    # from the names rather than be cut.
    excess = sum(max(0, max((len(line[column]) for line in lines), default=0) - usual)
                 for column, usual in NUMBERS.items())
    room = width - WIDTH - excess
    with_started = room >= STARTED_WIDTH
    if with_started:
        room -= STARTED_WIDTH
    worker_width = max((len(line["WORKER"]) for line in lines), default=0)
    with_worker = with_started and worker_width > 0 and room >= worker_width + 2
    if with_worker:
        room -= worker_width + 2
    name_width = max(MIN_NAME_WIDTH, NAME_WIDTH + (room // 2 if room > 0 else room))
    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=12)
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", max_width=name_width)
    table.add_column("STATUS", no_wrap=True, min_width=9)
    table.add_column("DONE", no_wrap=True, justify="right", min_width=NUMBERS["DONE"])
    if with_started:
        table.add_column("STARTED", no_wrap=True, min_width=11)
    if with_worker:
        table.add_column("WORKER", no_wrap=True)
    for column in ("TIME", "CPU", "MEM"):
        table.add_column(column, no_wrap=True, justify="right", min_width=NUMBERS[column])
    table.add_column("ERROR", no_wrap=True, overflow="ellipsis", min_width=10)
    for line in lines:
        left_out = {"STARTED"} if not with_started else set()
        left_out |= {"WORKER"} if not with_worker else set()
        shown = [column for column in line if column not in left_out]
        table.add_row(*(Text(line[column], style=cell_style(column, line[column]))
                        for column in shown))
    return table


def cells(row: Any, now: datetime, extra: Extras) -> dict[str, str]:
    """A run's line of the table, column by column."""
    error = (row.error_message or "").strip().splitlines()
    if row.status == RunStatus.PENDING:
        done = view.queue_text(extra.queue_position)
    else:
        done = view.percent_text(view.Snapshot.of(row))
    # CPU and memory are measured when the simulation ends: blank until then.
    ended = row.status not in ACTIVE_STATUSES
    return {
        "ID": row.id, "NAME": row.name or "",
        "STATUS": view.status_label(row.status, extra.stalled_at is not None), "DONE": done,
        "STARTED": view.local_time(row.started_at, "%m-%d %H:%M"),
        # A Slurm run names its node too: the worker submitted it, the node runs it.
        "WORKER": (extra.worker_id or "") + (f"@{extra.node}" if extra.node else ""),
        "TIME": view.duration(view.elapsed_seconds(row, now)),
        "CPU": view.cpu_text(extra.cpu_seconds) if ended else "",
        "MEM": view.memory_text(extra.peak_rss_bytes) if ended else "",
        "ERROR": error[0] if error else "",
    }  # fmt: skip


def cell_style(column: str, text: str) -> str:
    if column == "STATUS":
        return view.STATUS_STYLES.get(text.removesuffix(view.STALLED_MARK), "")
    return "red" if column == "ERROR" else ""
