"""`fusion-runner prune --older-than 30d [--status S ...] [--dry-run] [--json]`.

Deletes the rows of ended runs (COMPLETED, FAILED, CANCELLED, or those of
--status) whose `completed_at` is older than the cutoff, their rows in the
daemon's own tables (claims, outputs, results, events, meta) and their run
folders; says how many runs and how much disk space that freed (--dry-run:
would free, and changes nothing). A PENDING or RUNNING run, or a run without
`completed_at` (its processes may still be stopping), is never touched.

Each row is deleted by one conditional statement (its id, status IN the final
ones AND completed_at < cutoff), then its folder: a run requeued or changed
meanwhile does not match and keeps everything. A folder is removed only if it
resolves to `runs_dir/<id>` itself (the folder the daemon recorded, else
runs_dir/id): never a symbolic link, never anything outside runs_dir. A link
inside it (`output/fusion`) is removed, never what it points to.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fusion_runner.cli import lookup, view
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK
from fusion_runner.cli.lookup import UsageError
from fusion_runner.core import config as config_module
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import FINAL_STATUSES
from fusion_runner.core.store import Store

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
HELP = ("delete ended runs (COMPLETED, FAILED, CANCELLED) older than a duration, "
        "with their folders; never a live run")


def duration(text: str) -> timedelta:
    """argparse type: `30d`, `12h`, `90m`, `45s`, `2w` (a number and a unit)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a number and a unit (s, m, h, d or w), such as 30d, 12h or 90m; "
            f"got {text!r}")
    seconds = float(match.group(1)) * UNITS[match.group(2).lower()]
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long ago") from None


def add_arguments(prune: argparse.ArgumentParser, status_type: Any) -> None:
    prune.add_argument("--older-than", type=duration, required=True, metavar="DURATION",
                       help="runs that ended longer ago than this: 30d, 12h, 90m, 45s, 2w")
    prune.add_argument("--status", action="append", type=status_type, metavar="S",
                       help="only ended runs with this status (repeatable, or S1,S2)")
    prune.add_argument("--dry-run", action="store_true",
                       help="list what would be deleted and the space it would free; "
                            "change nothing")
    prune.add_argument("--json", action="store_true",
                       help='a JSON object: {"dry_run", "cutoff", "runs": [...], "bytes"}')


@dataclass
class Candidate:
    id: str
    name: str | None
    status: str
    completed_at: datetime
    folder: Path | None  # removable: resolved, inside runs_dir
    kept_folder: Path | None  # a folder that is not removed (outside runs_dir, a link)
    size: int
    pruned: bool = False
    removed: bool = False


def cmd_prune(args: argparse.Namespace, settings: config_module.Config) -> int:
    statuses = ended_statuses(args.status)
    cutoff = utcnow() - args.older_than
    errors: list[str] = []
    with lookup.open_store(settings) as store:
        candidates = [candidate(store, settings.runs_dir, row)
                      for row in store.prunable(cutoff, statuses)]
        if not args.dry_run:
            for run in candidates:
                run.pruned = store.prune_run(run.id, cutoff, statuses)
                if run.pruned and run.folder is not None:
                    try:
                        shutil.rmtree(run.folder)
                        run.removed = True
                    except FileNotFoundError:
                        run.size = 0
                    except OSError as error:
                        errors.append(f"{run.folder}: {error.strerror or error}")
    done = candidates if args.dry_run else [run for run in candidates if run.pruned]
    freed = sum(run.size for run in done if (run.folder is not None
                                             and (args.dry_run or run.removed)))
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "cutoff": view.iso(cutoff),
                          "runs": [run_json(run, args.dry_run) for run in done],
                          "bytes": freed}, indent=2))
    else:
        print("\n".join(summary(done, freed, cutoff, args.dry_run)))
    for problem in errors:
        print(f"fusion-runner: cannot remove {problem}", file=sys.stderr)
    return EXIT_FAILURE if errors else EXIT_OK


def ended_statuses(given: list[list[str]] | None) -> list[str] | None:
    if given is None:
        return None
    statuses = list(dict.fromkeys(status for group in given for status in group))
    live = [status for status in statuses if status not in FINAL_STATUSES]
    if live:
        raise UsageError(f"prune --status {live[0]}: only ended runs are pruned "
                         "(COMPLETED, FAILED, CANCELLED)")
    return statuses


def candidate(store: Store, runs_dir: Path | None, row: Any) -> Candidate:
    run = Candidate(str(row.id), row.name, str(row.status), row.completed_at,
                    folder=None, kept_folder=None, size=0)
    folder = folder_of(store, runs_dir, run.id)
    if folder is None or not os.path.lexists(folder):
        return run
    if removable(folder, runs_dir, run.id):
        run.folder = folder.resolve()
        run.size = disk_usage(run.folder)
    else:
        run.kept_folder = folder
    return run


def folder_of(store: Store, runs_dir: Path | None, run_id: str) -> Path | None:
    """The folder the daemon recorded for the run, else runs_dir/id."""
    recorded = store.recorded_run_dir(run_id)
    if recorded is not None:
        return Path(recorded)
    return None if runs_dir is None else runs_dir / run_id


def removable(folder: Path, runs_dir: Path | None, run_id: str) -> bool:
    """Whether `folder` is a real directory that is exactly runs_dir/<run_id> once resolved."""
    if runs_dir is None:
        return False
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return False  # a symbolic link or a file: left alone
        root = runs_dir.resolve(strict=True)
        resolved = folder.resolve(strict=True)
    except OSError:
        return False
    return resolved.parent == root and resolved.name == run_id


def disk_usage(folder: Path) -> int:
    """Bytes of disk the folder's files take (as du counts them; hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _, files in os.walk(folder):
        for name in [".", *files]:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            total += getattr(info, "st_blocks", 0) * 512 or info.st_size
    return total


def size_text(size: int) -> str:
    """`0 B`, `512 B`, `12.3 KiB`, `4.5 MiB`, `1.2 GiB`."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def summary(done: list[Candidate], freed: int, cutoff: datetime, dry_run: bool) -> list[str]:
    before = view.local_time(cutoff, "%Y-%m-%d %H:%M")
    if not done:
        return [f"nothing to prune: no ended run completed before {before}"]
    lines = []
    if dry_run:
        for run in done:
            lines.append(f"{run.id}  {run.status:<9}  "
                         f"{view.local_time(run.completed_at, '%Y-%m-%d %H:%M')}  "
                         f"{size_text(run.size) if run.folder else '-':>9}  {run.name or ''}"
                         .rstrip()[:80])
    counts = Counter(run.status for run in done)
    by_status = ", ".join(f"{status}: {count}" for status, count in sorted(counts.items()))
    runs = f"{len(done)} run{'s' if len(done) != 1 else ''} ({by_status})"
    folders = sum(1 for run in done if run.folder is not None and (dry_run or run.removed))
    if dry_run:
        lines.append(f"would prune {runs} completed before {before}, "
                     f"{folders} folder{'s' if folders != 1 else ''}: "
                     f"would free {size_text(freed)}")
    else:
        lines.append(f"pruned {runs} completed before {before}, "
                     f"{folders} folder{'s' if folders != 1 else ''}: freed {size_text(freed)}")
    kept = [run.kept_folder for run in done if run.kept_folder is not None]
    if kept:
        lines.append(f"kept {len(kept)} folder{'s' if len(kept) != 1 else ''} that "
                     f"{'are' if len(kept) != 1 else 'is'} not in runs_dir, e.g. {kept[0]}")
    return lines


def run_json(run: Candidate, dry_run: bool) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "status": run.status,
            "completed_at": view.iso(run.completed_at),
            "run_dir": None if run.folder is None else str(run.folder),
            "bytes": run.size if run.folder is not None else 0,
            "folder_removed": False if dry_run else run.removed}
