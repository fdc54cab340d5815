"""`fusion-runner cancel`: runs named by id, or every active run that a filter selects.

By id (`cancel ID...`), each run is looked up first (a bad usage cancels
nothing), then cancelled: a line per run, `ID: RUNNING -> CANCELLED` or `ID:
already COMPLETED, nothing changed`; an unknown or ambiguous id is one line on
stderr, the others are still cancelled, and the exit status is 1.

By filter (`--status S`, `--name GLOB`, or both), the PENDING and RUNNING runs
that match are selected (a filter on final statuses only selects nothing and
says so; exit 0). The count comes first: `cancel 12 runs (RUNNING: 3, PENDING:
9)? [y/N]` when stdin and stdout are both a terminal, where only `y` or `yes`
goes on (anything else, or the end of input, cancels nothing: exit 1); `-y`
skips the question. Elsewhere (a script, a pipe, cron) nothing could answer, so
it does not ask: `cancelling 12 runs (...)` and on, as `scancel` does.

Ids and filters together are bad usage (exit 2), and so is neither.

`--json` prints, instead of the lines, a list of `{"id", "before", "cancelled"}`
(`before`: the status the run had, null for an unknown id, which is then given
as typed). It never asks: with a filter on a terminal it needs `--yes` (else
bad usage, exit 2), so a JSON reader never waits on a question.

Every cancel is `Store.cancel`: one conditional update, so a run that ends
meanwhile keeps its outcome and is reported as already ended.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from fusion_runner.cli import lookup
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK
from fusion_runner.cli.lookup import UsageError
from fusion_runner.core import config as config_module
from fusion_runner.core.errors import UnknownRun
from fusion_runner.core.status import ACTIVE_STATUSES, RunStatus
from fusion_runner.core.store import Store

YES = ("y", "yes")
HELP = (
    "cancel pending or running runs, by id or by --status/--name; with a filter, "
    "asks [y/N] first when stdin and stdout are a terminal (-y does not ask; "
    "a script or a pipe is never asked)"
)


class Report:
    """What was done to each run, as lines or, with --json, as one list at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.entries: list[dict[str, Any]] = []
        self.status = EXIT_OK

    def unknown(self, given: str, error: UnknownRun) -> None:
        print(f"fusion-runner: {error}", file=sys.stderr)
        self.entries.append({"id": given, "before": None, "cancelled": False})
        self.status = EXIT_FAILURE

    def cancel(self, store: Store, run_id: str) -> None:
        before, changed = store.cancel(run_id)
        if before is None:  # deleted since it was looked up
            self.unknown(run_id, UnknownRun(f"no run with id {run_id!r}"))
            return
        self.entries.append({"id": run_id, "before": before, "cancelled": changed})
        if self.as_json:
            return
        if changed:
            print(f"{run_id}: {before} -> {RunStatus.CANCELLED}")
        else:
            print(f"{run_id}: already {before}, nothing changed")

    def say(self, line: str) -> None:
        if not self.as_json:
            print(line)

    def end(self) -> int:
        if self.as_json:
            print(json.dumps(self.entries, indent=2))
        return self.status


def cmd_cancel(args: argparse.Namespace, settings: config_module.Config) -> int:
    statuses = sorted({s for group in args.status for s in group}) if args.status else None
    filtered = statuses is not None or args.name is not None
    if filtered and args.ids:
        raise UsageError("give run ids or --status/--name, not both")
    if not filtered and not args.ids:
        raise UsageError("give the ids of the runs to cancel, or --status/--name to select them")
    asks = filtered and not args.yes and sys.stdin.isatty() and sys.stdout.isatty()
    if asks and args.json:
        raise UsageError("--json never asks for confirmation: add --yes to cancel what "
                         "--status/--name select")
    report = Report(args.json)
    with lookup.open_store(settings) as store:
        if not filtered:
            cancel_ids(store, args.ids, report)
        elif not cancel_selected(store, statuses, args.name, asks, report):
            print("nothing cancelled", file=sys.stderr)
            return EXIT_FAILURE
    return report.end()


def cancel_ids(store: Store, given_ids: list[str], report: Report) -> None:
    resolved = lookup.resolve_all(store, given_ids)  # a bad usage cancels nothing
    done: set[str] = set()
    for given, item in resolved:
        if isinstance(item, UnknownRun):
            report.unknown(given, item)
        elif item not in done:
            done.add(item)
            report.cancel(store, item)


def cancel_selected(
    store: Store, statuses: list[str] | None, name_glob: str | None, asks: bool, report: Report
) -> bool:
    """Cancel what the filter selects; False if the question was answered no."""
    if statuses is not None and not ACTIVE_STATUSES.intersection(statuses):
        report.say(f"nothing to cancel: {', '.join(statuses)} "
                   f"{'is' if len(statuses) == 1 else 'are'} final; only PENDING and RUNNING "
                   "runs can be cancelled")
        return True
    rows = store.select_cancellable(statuses, name_glob)
    if not rows:
        report.say("nothing to cancel: no PENDING or RUNNING run matches")
        return True
    counts = Counter(str(row.status) for row in rows)
    parts = ", ".join(f"{status}: {counts[status]}"
                      for status in (RunStatus.RUNNING, RunStatus.PENDING) if counts[status])
    what = f"{len(rows)} run{'s' if len(rows) != 1 else ''} ({parts})"
    if asks:
        if not confirm(f"cancel {what}? [y/N] "):
            return False
    else:
        report.say(f"cancelling {what}")
    for row in rows:
        report.cancel(store, str(row.id))
    return True


def confirm(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        print()
        return False
    return answer.strip().lower() in YES
