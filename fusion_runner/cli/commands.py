"""The client commands logs and watch (SPEC §9; `submit`, `ls`, `show`, `cancel` have modules).

Each takes the parsed arguments and the configuration and returns the exit
status; a problem is raised (UsageError, UnknownRun, ...) and `cli.main`
turns it into one line and the status of SPEC §9.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from fusion_runner.cli import lookup, simlog, watch
from fusion_runner.cli.exitcodes import EXIT_INTERRUPTED, EXIT_OK
from fusion_runner.cli.lookup import UsageError
from fusion_runner.core import config as config_module
from fusion_runner.core.errors import UnknownRun
from fusion_runner.core.status import RunStatus


def console() -> Console:
    # rich colours only a terminal, honours NO_COLOR, and is 80 wide elsewhere.
    return Console(highlight=False)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


# --- ls's --status (the command is listing.py's) ------------------------------------


def status_list(text: str) -> list[str]:
    """argparse type for --status: one or more statuses, comma-separated, any case."""
    statuses = [part.strip().upper() for part in text.split(",") if part.strip()]
    known = [status.value for status in RunStatus]
    for status in statuses:
        if status not in known:
            raise argparse.ArgumentTypeError(
                f"unknown status {status!r} (one of {', '.join(known)})")
    return statuses


# --- logs, watch (cancel has its module) ---------------------------------------------


def cmd_logs(args: argparse.Namespace, settings: config_module.Config) -> int:
    # -f is ended by Ctrl-C: within a second, even in a wait for the database.
    with watch.CtrlC(), lookup.open_store(settings) as store:
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
            # With -n, like `tail -n N -f`: the last lines, then what comes.
            start = 0 if args.lines is None else simlog.tail_offset(path, args.lines)
            simlog.follow(store, run_id, log_path, sys.stdout.buffer, offset=start)
            return EXIT_OK
        if not path.exists():
            row = store.get_run(run_id)
            status = row.status if row is not None else "deleted"
            raise UnknownRun(f"run {run_id} ({status}) has no log at {path}")
        if args.lines is None:
            simlog.copy_from(path, 0, sys.stdout.buffer)
        else:
            simlog.copy_last_lines(path, args.lines, sys.stdout.buffer)
        return EXIT_OK
    return EXIT_INTERRUPTED


def cmd_watch(args: argparse.Namespace, settings: config_module.Config) -> int:
    if args.json and not args.once:
        raise UsageError("watch --json needs --once (there is no live JSON output)")
    out = console()
    live = out.is_terminal and not out.is_dumb_terminal and not args.once
    with (watch.CtrlC("stopped watching; the runs go on", watch.SHOW_CURSOR if live else b""),
          lookup.open_store(settings) as store):
        ids = [lookup.resolve(store, given) for given in args.ids] or None
        if ids is not None:
            ids = list(dict.fromkeys(ids))
        if args.json:
            print_json(watch.once_json(store, ids))
            return EXIT_OK
        if args.once:
            return watch.once(store, ids, out)
        return watch.run(store, ids, out)
    return EXIT_INTERRUPTED
