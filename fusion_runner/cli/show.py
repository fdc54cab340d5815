"""`fusion-runner show ID`: every column of a run, its directory, exit record and log's end.

As text, folded to 80 columns; with --json, one object: the SPEC §1 columns
under their own names (timestamps in ISO 8601), plus `worker_id` (the daemon
that claimed the run last, null if none did), `run_dir`, `exit_record` and
`outputs` (the folders outside the run folder where the simulation wrote
results, as FUSION's log named them, each with its link in the run folder)
and `results` (the blocking probability per Erlang point, as `fusion-runner
results --json` has a run's `points`; as text, a block after the exit line).
`history` lists what the daemon did to the run (`at`, `worker_id`, `event`,
`detail`; as text, a block before the log's end) and `stalled_at` says since
when its progress is marked stalled (null: it is not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from datetime import datetime
from typing import Any

from fusion_runner.cli import lookup, simlog, view
from fusion_runner.cli import results as results_module
from fusion_runner.cli.exitcodes import EXIT_OK
from fusion_runner.core import config as config_module
from fusion_runner.core import exitrecord, outcome, runconfig, rundir
from fusion_runner.core.errors import InvalidRun, UnknownRun
from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.daemon import outputs

WIDTH = 80
LABEL = 18  # the width of the column names, a space included
LOG_LINES = 20
BLOCKS = ("error_message", "config_json")  # shown below the one-line columns, unless null


def cmd_show(args: argparse.Namespace, settings: config_module.Config) -> int:
    with lookup.open_store(settings) as store:
        run_id = lookup.resolve(store, args.id)
        row = store.get_run(run_id)
        paths = lookup.run_paths(store, settings, run_id)
        found = run_outputs(store.run_outputs(run_id), paths)
        worker = store.worker_of(run_id)
        lineage = store.parent_of(run_id), store.reruns_of(run_id)
        job = store.queue_of(run_id)
        history = store.history(run_id)  # the daemon's record of what it did to the run
        stalled_at = store.stalled_of([run_id]).get(run_id)
        points = results_module.gather(store, settings, [run_id])[0]
    if row is None:
        raise UnknownRun(f"no run with id {args.id!r}")
    record = exitrecord.read(paths.exit_record) if paths is not None else None
    if args.json:
        print(json.dumps(view.row_json(row) | {
            "worker_id": worker,
            "parent_id": lineage[0],
            "reruns": lineage[1],
            "job": job,
            "run_dir": None if paths is None else str(paths.run_dir),
            "exit_record": None if record is None else exit_json(record),
            "outputs": found,
            "stalled_at": view.iso(stalled_at),
            "history": [event | {"at": view.iso(event["at"])} for event in history],
            "results": points.json()["points"],
        }, indent=2))  # fmt: skip
    else:
        print("\n".join(text_lines(row, paths, record, found, worker, job, points=points,
                                     lineage=lineage,
                                     history=history, stalled_at=stalled_at)))
    return EXIT_OK


def run_outputs(
    noted: list[tuple[str, datetime]], paths: rundir.RunPaths | None
) -> list[dict[str, Any]]:
    """The result folders noted for a run, each with its link (`output/fusion`) if any."""
    linked: dict[str, str] = {}
    if paths is not None:  # each link as a path inside the run folder
        linked = {target: str((paths.output_dir / name).relative_to(paths.run_dir))
                  for target, name in outputs.links(paths.output_dir).items()}
    return [{"path": path, "first_seen": view.iso(first_seen), "link": linked.get(path)}
            for path, first_seen in noted]


def text_lines(row: Any, paths: rundir.RunPaths | None, record: outcome.ExitRecord | None,
               found: list[dict[str, Any]] | None = None, worker: str | None = None,
               job: dict[str, str | None] | None = None,
               *, points: results_module.RunResults | None = None,
               lineage: tuple[str | None, list[str]] | None = None,
               history: list[dict[str, Any]] | None = None,
               stalled_at: datetime | None = None) -> list[str]:
    lines = [field(column, value_text(getattr(row, column)))
             for column in RUNS_COLUMNS if column not in BLOCKS or getattr(row, column) is None]
    lines.append(field("worker", worker or "-"))
    if lineage is not None:  # the run it reran, and the runs that rerun it
        lines.append(field("parent", lineage[0] or "-"))
        lines.append(field("reruns", ", ".join(lineage[1]) or "-"))
    if job is not None:  # a Slurm job: its id, its node, and why it waits
        lines.append(field("slurm_job", f"{job['id']} on {job['node'] or '-'}"))
        if row.status == "PENDING":
            lines.append(field("waiting", job["reason"] or "queued"))
    if stalled_at is not None and row.status == "RUNNING":
        lines.append(field("stalled", f"since {view.local_time(stalled_at)}: its progress "
                                      "has not moved"))
    lines.append(field("run_dir", str(paths.run_dir) if paths is not None else "-"))
    lines.append(field("exit", exit_text(record)))
    for output in found or []:  # one line each, so that a folded path is told apart
        link = f"{output['link']} -> " if output["link"] else ""
        lines.append(field("results", f"{link}{output['path']}"))
    if points is not None and points.points:  # blocking probability per Erlang load
        lines += block("blocking probability", results_module.table_lines(
            [points], headers=False))
    lines += block("error_message", (row.error_message or "").splitlines())
    lines += block("config_json", config_lines(row.config_json))
    lines += block("history", history_lines(history or []))
    tail = simlog.last_lines(paths.log_file, LOG_LINES) if paths is not None else None
    lines += block(f"sim.log, last {LOG_LINES} lines",
                   tail or (["(no log)"] if tail is None else ["(empty)"]))
    return lines


def history_lines(history: list[dict[str, Any]]) -> list[str]:
    """One line per event the daemon recorded: local time, worker, event, detail."""
    return [f"{view.local_time(event['at'], '%m-%d %H:%M:%S')}"
            f".{event['at'].microsecond // 1000:03d}  {event['worker_id'] or '-'}  "
            f"{event['event']:<11} {event['detail'] or ''}".rstrip() for event in history]


def value_text(value: object) -> str:
    if isinstance(value, datetime):
        return view.local_time(value)
    return "-" if value is None else str(value)


def field(label: str, value: str) -> str:
    """`label             value`, a long value folded under itself."""
    return "\n".join(textwrap.wrap(
        f"{label:<{LABEL - 1}} {value}", WIDTH, subsequent_indent=" " * LABEL,
        break_on_hyphens=False) or [label])  # fmt: skip


def block(title: str, lines: list[str]) -> list[str]:
    """A titled block indented by two, each line folded to the width."""
    if not lines:
        return []
    folded = [piece for line in lines for piece in
              textwrap.wrap(line.expandtabs(), WIDTH - 2, replace_whitespace=False,
                            drop_whitespace=False, subsequent_indent="  ") or [""]]
    return ["", f"{title}:", *(("  " + piece).rstrip() for piece in folded)]


def config_lines(config_json: str) -> list[str]:
    """config_json as the config.ini the daemon writes from it."""
    try:
        return runconfig.render_ini(runconfig.parse_config_json(config_json)).rstrip().splitlines()
    except InvalidRun as error:
        return [f"(not a valid config: {error})", config_json]


def exit_json(record: outcome.ExitRecord) -> dict[str, Any]:
    signal_name = None if record.signal is None else outcome.signal_name(record.signal)
    return dataclasses.asdict(record) | {"signal_name": signal_name}


def exit_text(record: outcome.ExitRecord | None) -> str:
    if record is None:
        return "-"
    if record.spawn_error is not None:
        how = f"could not start: {record.spawn_error}"
    elif record.signal is not None:
        how = f"killed by {outcome.signal_name(record.signal)}"
    else:
        how = f"exit code {record.exit_code}"
    return f"{how}, {record.cpu_seconds:.2f} s CPU, max RSS {record.max_rss_kib / 1024:.1f} MiB"
