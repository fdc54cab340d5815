"""`fusion-runner hold ID...` and `fusion-runner release ID...`.

A held run stays PENDING and no daemon starts it until it is released; then it
takes its place in the queue again (higher priority first, then oldest). Only a
PENDING run is held. One line per run says what changed: `ID: held`, `ID:
already held, nothing changed`, `ID: RUNNING, not held (only a PENDING run is
held)`; `ID: released`, `ID: not held, nothing changed`. Every id is looked up
first (a bad usage changes nothing); an unknown or ambiguous id is one line on
stderr, the others are still done, and the exit status is 1, as it is when a
run could not be held. The hold lives in `fusion_runner_meta`: `runs` is unchanged.
"""

from __future__ import annotations

import argparse
import sys

from fusion_runner.cli import lookup
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK
from fusion_runner.core import config as config_module
from fusion_runner.core.errors import UnknownRun
from fusion_runner.core.queueverbs import Change, HoldResult
from fusion_runner.core.store import Store

HOLD_HELP = "keep pending runs from starting until released"
RELEASE_HELP = "let held runs start again, in their place in the queue"


def cmd_hold(args: argparse.Namespace, settings: config_module.Config) -> int:
    return _each(args.ids, settings, holding=True)


def cmd_release(args: argparse.Namespace, settings: config_module.Config) -> int:
    return _each(args.ids, settings, holding=False)


def _each(given_ids: list[str], settings: config_module.Config, *, holding: bool) -> int:
    status = EXIT_OK
    with lookup.open_store(settings) as store:
        resolved = lookup.resolve_all(store, given_ids)  # a bad usage changes nothing
        done: set[str] = set()
        for given, item in resolved:
            if isinstance(item, UnknownRun):
                print(f"fusion-runner: {item}", file=sys.stderr)
                status = EXIT_FAILURE
                continue
            if item in done:
                continue
            done.add(item)
            if not _one(store, given, item, holding):
                status = EXIT_FAILURE
    return status


def _one(store: Store, given: str, run_id: str, holding: bool) -> bool:
    result: HoldResult = store.hold(run_id) if holding else store.release(run_id)
    if result.change is Change.UNKNOWN:
        print(f"fusion-runner: no run with id {given!r}", file=sys.stderr)
        return False
    if result.change is Change.NOT_PENDING:
        print(f"{run_id}: {result.status}, not held (only a PENDING run is held)")
        return False
    if result.change is Change.ALREADY:
        print(f"{run_id}: {'already held' if holding else 'not held'}, nothing changed")
        return True
    print(f"{run_id}: {'held' if holding else 'released'}")
    return True
