"""The `fusion-runner` command: the daemon and the client commands (SPEC §9)."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fusion_runner import config as config_module
from fusion_runner import inifile, rundir
from fusion_runner.errors import ConfigError, InvalidRun, SchemaError, UnknownRun
from fusion_runner.models import RUNS_COLUMNS
from fusion_runner.store import Store

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
Command = Callable[[argparse.Namespace, config_module.Config], int]


class UsageError(Exception):
    """A command was given something it cannot use (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = config_module.from_args(args)
        command: Command = args.command
        return command(args, settings)
    except (ConfigError, SchemaError, UsageError) as error:
        print(f"fusion-runner: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UnknownRun as error:
        print(f"fusion-runner: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    config_module.add_arguments(common)
    parser = argparse.ArgumentParser(
        prog="fusion-runner", description="Run FUSION simulations from the runs table."
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    daemon = commands.add_parser(
        "daemon", parents=[common], help="run the daemon in the foreground"
    )
    daemon.set_defaults(command=cmd_daemon)

    submit = commands.add_parser("submit", parents=[common], help="queue a run from an INI file")
    submit.add_argument("ini", metavar="CONFIG.ini", type=Path)
    submit.add_argument("--name", help="display name (default: the file's stem)")
    submit.add_argument("--template", help="template name (default: the file's name)")
    submit.set_defaults(command=cmd_submit)

    ls = commands.add_parser("ls", parents=[common], help="list runs, newest first")
    ls.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    ls.set_defaults(command=cmd_ls)

    show = commands.add_parser("show", parents=[common], help="every column of one run")
    show.add_argument("id")
    show.set_defaults(command=cmd_show)

    demo = commands.add_parser("demo", help="run three small simulations end to end")
    demo.add_argument("--dir", type=Path, default=Path("data/demo"),
                      help="folder for the demo's database and runs (default: data/demo)")
    demo.set_defaults(command=cmd_demo)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel pending or running runs")
    cancel.add_argument("ids", nargs="+", metavar="ID")
    cancel.set_defaults(command=cmd_cancel)
    return parser


# --- daemon -------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace, settings: config_module.Config) -> int:
    from fusion_runner.supervisor import Supervisor
    from fusion_runner.systemd import Notifier

    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # watchdog logs every inotify event at DEBUG: noise, and a loop when the
    # daemon's own log file lies in the database's folder.
    logging.getLogger("watchdog").setLevel(max(logging.INFO, logging.getLogger().level))
    store = Store.open(settings.database_url)
    try:
        return Supervisor(settings, store, notifier=Notifier()).run()
    finally:
        store.close()


def cmd_demo(args: argparse.Namespace, settings: config_module.Config) -> int:
    from fusion_runner import demo

    return demo.run_demo(args.dir)


# --- client commands ------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: config_module.Config) -> int:
    try:
        config_json = inifile.to_config_json(inifile.read_ini(args.ini))
    except InvalidRun as error:
        raise UsageError(str(error)) from None
    try:
        rundir.parse_config_json(config_json)
    except InvalidRun as error:
        raise UsageError(f"{args.ini}: {error}") from None
    run_id = secrets.token_hex(6)
    store = Store.open(settings.database_url)
    try:
        store.insert_run(
            run_id, name=args.name or args.ini.stem, config_json=config_json,
            template=args.template or args.ini.name,
        )
    finally:
        store.close()
    print(run_id)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, settings: config_module.Config) -> int:
    store = Store.open(settings.database_url)
    try:
        rows = store.list_runs(limit=args.limit)
    finally:
        store.close()
    print(f"{'ID':<12}  {'STATUS':<9}  {'PROGRESS':<16}  {'CREATED':<19}  NAME")
    for row in rows:
        print(f"{row.id:<12}  {row.status:<9}  {progress_text(row):<16}  "
              f"{format_time(row.created_at):<19}  {row.name or ''}")
    return EXIT_OK


def progress_text(row: Any) -> str:
    parts = []
    if row.current_erlang is not None:
        parts.append(f"E {row.current_erlang:g}")
    if row.current_iteration is not None:
        total = f"/{row.total_iterations}" if row.total_iterations is not None else ""
        parts.append(f"it {row.current_iteration}{total}")
    return " ".join(parts) or "-"


def format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def cmd_show(args: argparse.Namespace, settings: config_module.Config) -> int:
    store = Store.open(settings.database_url)
    try:
        row = store.get_run(args.id)
    finally:
        store.close()
    if row is None:
        raise UnknownRun(f"no run with id {args.id!r}")
    for column in RUNS_COLUMNS:
        value = getattr(row, column)
        print(f"{column:<17} {'' if value is None else value}")
    print(f"{'run_dir':<17} {settings.runs_dir.resolve() / row.id}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: config_module.Config) -> int:
    store = Store.open(settings.database_url)
    status = EXIT_OK
    try:
        for run_id in args.ids:
            before, changed = store.cancel(run_id)
            if before is None:
                print(f"{run_id}: no such run", file=sys.stderr)
                status = EXIT_FAILURE
            elif changed:
                print(f"{run_id}: {before} -> CANCELLED")
            else:
                print(f"{run_id}: already {before}, nothing changed")
    finally:
        store.close()
    return status
