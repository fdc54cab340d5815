"""`fusion-runner show ID`: every column of a run, its directory, exit record and log's end.

As text, folded to 80 columns; with --json, one object: the SPEC §1 columns
under their own names (timestamps in ISO 8601), plus `run_dir`, `exit_record`
and `outputs` (the folders outside the run folder where the simulation wrote
results, as FUSION's log named them, each with its link in the run folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

from fusion_runner.cli import client, logs, view
from fusion_runner.core import config as config_module
from fusion_runner.core import outcome, rundir
from fusion_runner.core.errors import InvalidRun, UnknownRun
from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.daemon import outputs

WIDTH = 80
LABEL = 18  # the width of the column names, a space included
LOG_LINES = 20
BLOCKS = ("error_message", "config_json")  # shown below the one-line columns, unless null


def cmd_show(args: argparse.Namespace, settings: config_module.Config) -> int:
    with client.open_store(settings) as store:
        run_id = client.resolve(store, args.id)
        row = store.get_run(run_id)
        folder = client.run_dir(store, settings, run_id)
        found = run_outputs(store.run_outputs(run_id), folder)
    if row is None:
        raise UnknownRun(f"no run with id {args.id!r}")
    record = client.exit_record(folder) if folder is not None else None
    if args.json:
        print(json.dumps(client.row_json(row) | {
            "run_dir": None if folder is None else str(folder),
            "exit_record": None if record is None else exit_json(record),
            "outputs": found,
        }, indent=2))  # fmt: skip
    else:
        print("\n".join(text_lines(row, folder, record, found)))
    return 0


def run_outputs(noted: list[tuple[str, datetime]], folder: Path | None) -> list[dict[str, Any]]:
    """The result folders noted for a run, each with its link (`output/fusion`) if any."""
    linked = outputs.links(folder / "output") if folder is not None else {}
    return [{"path": path, "first_seen": client.iso(first_seen),
             "link": f"output/{linked[path]}" if path in linked else None}
            for path, first_seen in noted]


def text_lines(row: Any, folder: Path | None, record: outcome.ExitRecord | None,
               found: list[dict[str, Any]] | None = None) -> list[str]:
    lines = [field(column, value_text(getattr(row, column)))
             for column in RUNS_COLUMNS if column not in BLOCKS or getattr(row, column) is None]
    lines.append(field("run_dir", str(folder or "-")))
    lines.append(field("exit", exit_text(record)))
    for output in found or []:  # one line each, so that a folded path is told apart
        link = f"{output['link']} -> " if output["link"] else ""
        lines.append(field("results", f"{link}{output['path']}"))
    lines += block("error_message", (row.error_message or "").splitlines())
    lines += block("config_json", config_lines(row.config_json))
    tail = logs.last_lines(client.log_file(folder), LOG_LINES) if folder else None
    lines += block(f"sim.log, last {LOG_LINES} lines",
                   tail or (["(no log)"] if tail is None else ["(empty)"]))
    return lines


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
        return rundir.render_ini(rundir.parse_config_json(config_json)).rstrip().splitlines()
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
