"""`fusion-runner workers`: the daemons that share the database, and whether any is alive.

One line per worker (as each registered in `fusion_runner_workers`): its host,
pid, state, heartbeat age, running count and start. A worker is alive when it
heartbeat within `lease_timeout_seconds` (read from this command's own
configuration, as the daemons read theirs) and neither stopped cleanly nor was
declared lost. The age is this host's clock against the worker's: the hosts
need synchronised clocks (NTP). With --json: a list of objects with
`worker_id`, `host`, `pid`, `started_at`, `heartbeat_at`, `alive`, `running`,
and `version`, `state`, `stopped_at`, `lost_at`.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any, TypeVar

from fusion_runner.cli import lookup, view
from fusion_runner.cli.commands import print_json
from fusion_runner.cli.exitcodes import EXIT_OK
from fusion_runner.core import config as config_module
from fusion_runner.core.clock import utcnow

NO_TABLE = ("no daemon has registered yet (no fusion-runner daemon of this version "
            "has served this database)")
NONE_ALIVE = "no daemon is alive: new runs stay PENDING until one starts"
P = TypeVar("P", bound=argparse.ArgumentParser)
HEADERS = ("WORKER", "HOST", "PID", "STATE", "HEARTBEAT", "RUNNING", "STARTED")


def settings_parser(kind: type[P]) -> P:
    """The settings `workers` takes: a client's, and the lease that tells alive from not."""
    parser = kind(add_help=False)
    config_module.add_arguments(parser, (*config_module.CLIENT_KEYS, "lease_timeout_seconds"))
    return parser


def cmd_workers(args: argparse.Namespace, settings: config_module.Config) -> int:
    with lookup.open_store(settings) as store:
        rows = store.list_workers()
    now = utcnow()
    lease = settings.lease_timeout_seconds
    if args.json:
        print_json([worker_json(row, now, lease) for row in rows or []])
        return EXIT_OK
    if rows is None:
        print(NO_TABLE)
        return EXIT_OK
    if not rows:
        print("no daemon has registered yet")
        return EXIT_OK
    print("\n".join(table_lines([line_fields(row, now, lease) for row in rows])))
    alive = sum(1 for row in rows if state(row, now, lease) == "alive")
    print(NONE_ALIVE if alive == 0 else f"{alive} of {len(rows)} alive "
          f"(lease {lease:g}s)")
    return EXIT_OK


def state(row: Any, now: datetime, lease: float) -> str:
    """alive; stopped (cleanly); lost (declared so by another daemon); silent (its
    heartbeat is older than the lease, not yet declared lost)."""
    if row.stopped_at is not None:
        return "stopped"
    if row.lost_at is not None:
        return "lost"
    if (now - row.heartbeat_at).total_seconds() > lease:
        return "silent"
    return "alive"


def worker_json(row: Any, now: datetime, lease: float) -> dict[str, Any]:
    current = state(row, now, lease)
    return {
        "worker_id": row.worker_id, "host": row.host, "pid": row.pid,
        "started_at": view.iso(row.started_at), "heartbeat_at": view.iso(row.heartbeat_at),
        "alive": current == "alive", "running": row.running, "state": current,
        "version": row.version, "stopped_at": view.iso(row.stopped_at),
        "lost_at": view.iso(row.lost_at),
    }  # fmt: skip


def line_fields(row: Any, now: datetime, lease: float) -> tuple[str, ...]:
    age = max((now - row.heartbeat_at).total_seconds(), 0.0)
    return (row.worker_id, row.host, str(row.pid), state(row, now, lease),
            f"{view.duration(age)} ago", str(row.running),
            view.local_time(row.started_at, "%Y-%m-%d %H:%M"))


def table_lines(lines: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cells[i]) for cells in (HEADERS, *lines)) for i in range(len(HEADERS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            .rstrip() for cells in (HEADERS, *lines)]
