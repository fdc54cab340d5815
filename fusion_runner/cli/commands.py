"""The client commands: submit, ls, logs, cancel, watch (SPEC §9; `show` has its own module).

Each takes the parsed arguments and the configuration and returns the exit
status; a problem is raised (UsageError, UnknownRun, ...) and `cli.main`
turns it into one line and the status of SPEC §9.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fusion_runner.cli import lookup, simlog, view, watch
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from fusion_runner.cli.lookup import UsageError
from fusion_runner.core import config as config_module
from fusion_runner.core import inifile, runconfig, rundir
from fusion_runner.core.clock import utcnow
from fusion_runner.core.errors import InvalidRun, UnknownRun
from fusion_runner.core.status import RunStatus

WIDTH = 80
MAX_NAME, MAX_TEMPLATE = 255, 100  # String(255), String(100) of SPEC §1


def console() -> Console:
    # rich colours only a terminal, honours NO_COLOR, and is 80 wide elsewhere.
    return Console(highlight=False)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


# --- submit --------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: config_module.Config) -> int:
    try:
        config = inifile.read_ini(args.ini)
    except InvalidRun as error:
        raise UsageError(str(error)) from None
    for assignment in args.set:
        apply_setting(config, assignment)
    config_json = inifile.to_config_json(config)
    try:
        runconfig.parse_config_json(config_json)
    except InvalidRun as error:
        raise UsageError(f"{args.ini}: {error}") from None
    name = args.name if args.name is not None else args.ini.stem
    template = args.template if args.template is not None else args.ini.name
    if len(name) > MAX_NAME or len(template) > MAX_TEMPLATE:
        raise UsageError(f"--name is at most {MAX_NAME} characters, "
                         f"--template at most {MAX_TEMPLATE}")
    run_id = rundir.new_run_id()
    with lookup.open_store(settings) as store:
        store.insert_run(run_id, name=name, config_json=config_json, template=template)
    if args.json:
        print_json({"id": run_id})
    else:
        print(run_id)
    return EXIT_OK


def apply_setting(config: dict[str, dict[str, object]], assignment: str) -> None:
    """`section.key=value` into config; the value typed as an INI file's would be."""
    target, equals, text = assignment.partition("=")
    section, dot, key = target.strip().partition(".")
    if not (equals and dot and section and key.strip()):
        raise UsageError(f"--set {assignment!r}: expected section.key=value")
    config.setdefault(section, {})[key.strip()] = inifile.ini_value(text.strip())


# --- ls ----------------------------------------------------------------------------------


def status_list(text: str) -> list[str]:
    """argparse type for --status: one or more statuses, comma-separated, any case."""
    statuses = [part.strip().upper() for part in text.split(",") if part.strip()]
    known = [status.value for status in RunStatus]
    for status in statuses:
        if status not in known:
            raise argparse.ArgumentTypeError(
                f"unknown status {status!r} (one of {', '.join(known)})")
    return statuses


def cmd_ls(args: argparse.Namespace, settings: config_module.Config) -> int:
    statuses = sorted({s for group in args.status for s in group}) if args.status else None
    limit = args.limit or None
    with lookup.open_store(settings) as store:
        rows = store.select_runs(statuses, limit)
        total = store.count_runs(statuses) if limit is not None and len(rows) == limit else 0
    if args.json:
        print_json([view.row_json(row) for row in rows])
        return EXIT_OK
    out = console()
    if not rows:
        out.print("no runs" + (f" with status {', '.join(statuses)}" if statuses else ""))
        return EXIT_OK
    out.print(ls_table(rows, utcnow(), out.width))
    if total > len(rows):
        out.print(Text(f"{len(rows)} of {total} runs; --limit 0 lists them all", style="dim"))
    return EXIT_OK


def ls_table(rows: list[Any], now: datetime, width: int = WIDTH) -> Table:
    """id, name, status, progress, started, duration, error's first line; fits 80 columns."""
    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=12)
    # Names get what an 80-column terminal can spare, and half of any extra width.
    name_width = 14 + max(0, width - WIDTH) // 2
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", max_width=name_width)
    table.add_column("STATUS", no_wrap=True, min_width=9)
    table.add_column("DONE", no_wrap=True, justify="right", min_width=4)
    table.add_column("STARTED", no_wrap=True, min_width=11)
    table.add_column("TIME", no_wrap=True, justify="right", min_width=6)
    table.add_column("ERROR", no_wrap=True, overflow="ellipsis", min_width=10)
    for row in rows:
        error = (row.error_message or "").strip().splitlines()
        snapshot = view.Snapshot.of(row)
        table.add_row(
            Text(row.id), Text(row.name or ""), view.status_text(row.status),
            Text(view.percent_text(snapshot)), Text(view.local_time(row.started_at, "%m-%d %H:%M")),
            Text(view.duration(view.elapsed_seconds(row, now))),
            Text(error[0] if error else "", style="red"),
        )  # fmt: skip
    return table


# --- logs, cancel, watch --------------------------------------------------------------


def cmd_logs(args: argparse.Namespace, settings: config_module.Config) -> int:
    with lookup.open_store(settings) as store:
        run_id = lookup.resolve(store, args.id)

        def log_path() -> Path:
            # Asked again while following: a pending run's directory is known
            # for sure only once the daemon has recorded it.
            paths = lookup.run_paths(store, settings, run_id)
            if paths is None:
                raise UnknownRun(f"run {run_id} has no run directory (its id is not valid)")
            return paths.log_file

        path = log_path()
        if args.follow:
            simlog.follow(store, run_id, log_path, sys.stdout.buffer)
            return EXIT_OK
        row = store.get_run(run_id)
    if not path.exists():
        status = row.status if row is not None else "deleted"
        raise UnknownRun(f"run {run_id} ({status}) has no log at {path}")
    simlog.copy_from(path, 0, sys.stdout.buffer)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: config_module.Config) -> int:
    status = EXIT_OK
    with lookup.open_store(settings) as store:
        resolved: list[str | UnknownRun] = []
        for given in args.ids:  # all looked up first: a bad usage cancels nothing
            try:
                resolved.append(lookup.resolve(store, given))
            except UnknownRun as error:
                resolved.append(error)
        done: set[str] = set()
        for item in resolved:
            if isinstance(item, UnknownRun):
                print(f"fusion-runner: {item}", file=sys.stderr)
                status = EXIT_FAILURE
                continue
            if item in done:
                continue
            done.add(item)
            before, changed = store.cancel(item)
            if before is None:
                print(f"fusion-runner: no run with id {item!r}", file=sys.stderr)
                status = EXIT_FAILURE
            elif changed:
                print(f"{item}: {before} -> {RunStatus.CANCELLED}")
            else:
                print(f"{item}: already {before}, nothing changed")
    return status


def cmd_watch(args: argparse.Namespace, settings: config_module.Config) -> int:
    out = console()
    with lookup.open_store(settings) as store:
        ids = [lookup.resolve(store, given) for given in args.ids] or None
        if ids is not None:
            ids = list(dict.fromkeys(ids))
        try:
            return watch.run(store, ids, out)
        except KeyboardInterrupt:
            print("stopped watching; the runs go on", file=sys.stderr)
            return EXIT_INTERRUPTED
