"""The `fusion-runner` command: the daemon and the client commands (SPEC §9).

Exit status: 0 on success; 1 on failure, an unknown or ambiguous id and a
database error included; 2 on bad usage or configuration; 130 after Ctrl-C.
An error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from sqlalchemy.exc import SQLAlchemyError

from fusion_runner import __version__
from fusion_runner.cli import cancel as cancel_module
from fusion_runner.cli import commands, completion, effective_config
from fusion_runner.cli import hold as hold_module
from fusion_runner.cli import listing as listing_module
from fusion_runner.cli import prune as prune_module
from fusion_runner.cli import results as results_module
from fusion_runner.cli import show as show_module
from fusion_runner.cli import submit as submit_module
from fusion_runner.cli import workers as workers_module
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from fusion_runner.cli.lookup import MIN_PREFIX, UsageError
from fusion_runner.core import config as config_module
from fusion_runner.core.errors import ConfigError, NoDatabase, SchemaError, UnknownRun
from fusion_runner.core.store import Store

Command = Callable[[argparse.Namespace, config_module.Config], int]
ID_HELP = f"a run id, or any unique prefix of at least {MIN_PREFIX} characters"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    completion.autocomplete(parser)
    args = parser.parse_args(argv)
    resolved: config_module.Resolved | None = None
    try:
        # demo and completion read no settings: a broken configuration must not stop them.
        resolved = config_module.resolve_args(args) if args.uses_settings else None
        command: Command = args.command
        return command(args, resolved.config if resolved else config_module.Config())
    except NoDatabase as error:
        # Not bad usage: the database is elsewhere (the configuration says
        # where) or no daemon has run yet.
        origin = f" ({resolved.origin('database_url')})" if resolved else ""
        return fail(f"{error}{origin}", EXIT_FAILURE)
    except (ConfigError, SchemaError, UsageError) as error:
        return fail(str(error), EXIT_USAGE)
    except UnknownRun as error:
        return fail(str(error), EXIT_FAILURE)
    except (SQLAlchemyError, OSError) as error:
        if args.command is cmd_daemon:
            raise  # the daemon's own failures keep their traceback for the journal
        return client_failure(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def fail(message: str, status: int) -> int:
    print(f"fusion-runner: {one_line(message)}", file=sys.stderr)
    return status


def client_failure(error: SQLAlchemyError | OSError) -> int:
    if isinstance(error, BrokenPipeError):
        # The reader went away (`ls | head`): nothing is left to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    if isinstance(error, SQLAlchemyError):
        cause = getattr(error, "orig", None) or error
        return fail(f"database error: {cause}", EXIT_FAILURE)
    return fail(str(error), EXIT_FAILURE)


def one_line(text: str) -> str:
    """The message on one line, without SQLAlchemy's pointer to its error pages."""
    lines = [line for line in text.splitlines() if not line.startswith("(Background on ")]
    return " ".join(" ".join(lines).split())


class Parser(argparse.ArgumentParser):
    """argparse, with bad usage said in one line instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    client_settings = Parser(add_help=False)
    config_module.add_arguments(client_settings, config_module.CLIENT_KEYS)
    all_settings = Parser(add_help=False)
    config_module.add_arguments(all_settings)
    daemon_only = set(config_module.KEYS) - set(config_module.CLIENT_KEYS)
    parser = Parser(
        prog="fusion-runner", description="Run FUSION simulations from the runs table.",
        epilog="Settings may come before or after the command; "
               "`fusion-runner daemon --help` lists the daemon's.",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"fusion-runner {__version__}")
    config_module.add_arguments(parser, hidden=daemon_only)
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(
        name: str, run: Command, text: str, settings: Parser = client_settings
    ) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, parents=[settings], help=text, description=text)
        sub.set_defaults(command=run, uses_settings=True)
        return sub

    command("daemon", cmd_daemon, "run the daemon in the foreground", all_settings)
    effective = command("config", effective_config.cmd_config,
                        "print the effective settings and where each comes from", all_settings)
    effective.add_argument("--json", action="store_true", help="a JSON object")
    shell_text = "print a shell completion script (bash, zsh or fish)"
    shells = subparsers.add_parser("completion", help=shell_text, description=shell_text,
                                   epilog=completion.HOW_TO_INSTALL,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    shells.add_argument("shell", choices=completion.SHELLS)
    shells.set_defaults(command=completion.cmd_completion, uses_settings=False)

    submit = command("submit", submit_module.cmd_submit,
                     "queue runs from INI files (and --sweep values); print one id per line")
    submit_module.add_submit_arguments(submit)
    submit.add_argument("--priority", type=int, default=0, metavar="N",
                        help="higher starts first (default 0; may be negative); "
                             "runs of one priority start oldest first")

    ls = command("ls", listing_module.cmd_ls, "list runs, newest first")
    ls.add_argument("--status", action="append", type=commands.status_list, metavar="S",
                    help="only runs with this status (repeatable, or S1,S2)")
    ls.add_argument("--limit", type=non_negative, default=50, metavar="N",
                    help="at most N runs (default 50; 0 for all)")
    ls.add_argument("--json", action="store_true", help="a JSON list of rows")

    show = command("show", show_module.cmd_show,
                   "every column of a run, its directory, exit record and log's end")
    show.add_argument("id", metavar="ID", help=ID_HELP)
    show.add_argument("--json", action="store_true", help="a JSON object")

    results = command("results", results_module.cmd_results,
                      "blocking probability per Erlang load: mean, confidence interval, "
                      "iterations; several runs side by side")
    results.add_argument("ids", nargs="+", metavar="ID", help=ID_HELP)
    results_format = results.add_mutually_exclusive_group()
    results_format.add_argument("--csv", action="store_true",
                                help="one header line and one line per run and Erlang load")
    results_format.add_argument("--json", action="store_true",
                                help='a JSON list of {"id", "name", "points"}')
    results.add_argument("--plot", type=Path, metavar="FILE.png",
                         help="also draw blocking probability against load, one line per "
                              "run with its confidence band (needs the plot extra)")

    workers = command("workers", workers_module.cmd_workers,
                      "the daemons sharing the database: host, heartbeat, runs; alive or not",
                      workers_module.settings_parser(Parser))
    workers.add_argument("--json", action="store_true", help="a JSON list of workers")

    logs = command("logs", commands.cmd_logs, "print a run's sim.log")
    logs.add_argument("id", metavar="ID", help=ID_HELP)
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing as it grows, until the run ends (Ctrl-C: exit 130)")
    logs.add_argument("-n", "--lines", type=non_negative, metavar="N",
                      help="only the last N lines (with -f: then follow, as tail -n N -f)")

    cancel = command("cancel", cancel_module.cmd_cancel, "cancel pending or running runs")
    cancel.description = cancel_module.HELP
    cancel.add_argument("ids", nargs="*", metavar="ID",
                        help=f"{ID_HELP} (or select runs with --status/--name, not both)")
    cancel.add_argument("--status", action="append", type=commands.status_list, metavar="S",
                        help="the PENDING or RUNNING runs with this status (repeatable, or S1,S2)")
    cancel.add_argument("--name", metavar="GLOB",
                        help="the PENDING or RUNNING runs whose name matches this shell-style "
                             "pattern (*, ?, [seq]; case-sensitive; quote it)")
    cancel.add_argument("-y", "--yes", action="store_true",
                        help="do not ask before cancelling what --status/--name select")
    cancel.add_argument("--json", action="store_true",
                        help='a JSON list of {"id", "before", "cancelled"}; never asks, so '
                             "on a terminal a filter needs --yes")

    rerun = command("rerun", submit_module.cmd_rerun,
                    "queue a run again with the same config and template (plus --set changes)")
    submit_module.add_rerun_arguments(rerun, ID_HELP)

    prune = command("prune", prune_module.cmd_prune, prune_module.HELP)
    prune_module.add_arguments(prune, commands.status_list)

    hold = command("hold", hold_module.cmd_hold, hold_module.HOLD_HELP)
    hold.add_argument("ids", nargs="+", metavar="ID", help=f"{ID_HELP} (a PENDING run)")
    release = command("release", hold_module.cmd_release, hold_module.RELEASE_HELP)
    release.add_argument("ids", nargs="+", metavar="ID", help=ID_HELP)

    watch = command("watch", commands.cmd_watch,
                    "live progress bars until the runs end (exit 0 if all COMPLETED)")
    watch.add_argument("ids", nargs="*", metavar="ID",
                       help=f"{ID_HELP} (default: every active run)")
    watch.add_argument("--once", action="store_true",
                       help="print the table as it is now and exit 0")
    watch.add_argument("--json", action="store_true",
                       help="only with --once: a JSON list of the runs "
                            "(as ls --json, plus percent)")

    demo = subparsers.add_parser("demo", help="run three small simulations end to end")
    demo.add_argument("--dir", type=Path, default=Path("data/demo"),
                      help="folder for the demo's database and runs (default: data/demo)")
    demo.set_defaults(command=cmd_demo, uses_settings=False)
    return parser


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


# --- daemon -------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace, settings: config_module.Config) -> int:
    from fusion_runner.core.errors import AlreadyRunning, CannotInspect
    from fusion_runner.daemon import logformat, worker_lock
    from fusion_runner.daemon.supervisor import Supervisor
    from fusion_runner.daemon.systemd import Notifier
    from fusion_runner.executors.choice import executor_for

    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    # Run ids and other client text go into messages: escaped, they cannot split or forge a line.
    logformat.install()
    # watchdog logs every inotify event at DEBUG: noise, and a loop when the
    # daemon's own log file lies in the database's folder.
    logging.getLogger("watchdog").setLevel(max(logging.INFO, logging.getLogger().level))
    store = Store.open(settings.database_url)
    try:
        if settings.group_write:
            share_with_group(settings)
        # Held until the daemon exits, taken before it reconciles anything: a
        # second daemon of this worker_id would start its runs a second time.
        with worker_lock.acquire(settings.database_url, settings.worker_id):
            executor = executor_for(settings)
            return Supervisor(settings, store, executor, notifier=Notifier(),
                              read_config=lambda: config_module.from_args(args)).run()
    except (AlreadyRunning, CannotInspect) as error:
        # Neither goes away by restarting: a usage status, which a service
        # manager can be told not to restart on (RestartPreventExitStatus=2).
        return fail(str(error), EXIT_USAGE)
    finally:
        store.close()


def share_with_group(settings: config_module.Config) -> None:
    from fusion_runner.core import sharing

    database = config_module.sqlite_path(settings.database_url)
    try:
        logging.getLogger("fusion_runner").info(
            sharing.open_to_group(database, settings.runs_dir))
    except OSError as error:
        raise ConfigError(f"group_write: {error}") from None


def cmd_demo(args: argparse.Namespace, settings: config_module.Config) -> int:
    from fusion_runner.cli import demo

    return demo.run_demo(args.dir)
