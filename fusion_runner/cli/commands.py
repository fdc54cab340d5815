"""The client commands: submit, logs, watch (SPEC §9; `ls`, `show` and `cancel` have modules).

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
from fusion_runner.core import inifile, runconfig, rundir
from fusion_runner.core.errors import InvalidRun, UnknownRun
from fusion_runner.core.status import RunStatus

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
