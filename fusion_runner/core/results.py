"""The Erlang points of a results folder: FUSION's `{erlang}_erlang.json` files and the refsim's.

Both write one `{erlang}_erlang.json` per Erlang point (e.g. `300.0_erlang.json`)
with FUSION's keys: `blocking_mean`, `blocking_variance`, `ci_rate_block`,
`ci_percent_block`, `iter_stats` (per zero-based iteration, its `sim_block_list`)
and `sim_end_time`. FUSION writes null where it has too few iterations, and
rewrites its files while it runs, so a reader meets nulls, wrong types and half
written files: a value that is not what it should be reads as None, and a file
that cannot be read at all is skipped (logged at DEBUG). Nothing here raises.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = "_erlang.json"


@dataclass(frozen=True)
class ErlangPoint:
    """One Erlang point's results as its file has them (None where it has no valid value)."""

    erlang: float
    blocking_mean: float | None
    blocking_variance: float | None
    ci_rate_block: float | None  # the interval's half width
    ci_percent_block: float | None  # FUSION's: the whole width as a percentage of the mean
    iterations: int  # iterations the file has blocking probabilities of
    block_list: tuple[float, ...]  # those probabilities, first iteration first
    sim_end_time: str | None  # when the file was written, FUSION's `MMDD_HH_MM_SS_micro`
    path: Path

    @property
    def ci_lower(self) -> float | None:
        if self.blocking_mean is None or self.ci_rate_block is None:
            return None
        return self.blocking_mean - self.ci_rate_block

    @property
    def ci_upper(self) -> float | None:
        if self.blocking_mean is None or self.ci_rate_block is None:
            return None
        return self.blocking_mean + self.ci_rate_block


def read_points(folder: Path, *, subfolders: bool = False) -> list[ErlangPoint]:
    """The points of every readable `*_erlang.json` in folder, by Erlang then path.

    With `subfolders`, also those one level down (symlinks followed): FUSION
    writes into a folder per thread (`s1/`), reached from a run's `output/`.
    """
    folders = [folder, *(_subfolders(folder) if subfolders else [])]
    points = [
        point for path in _result_files(folders) if (point := read_point(path)) is not None
    ]
    return sorted(points, key=lambda point: (point.erlang, str(point.path)))


def read_point(path: Path) -> ErlangPoint | None:
    """The point in one file, or None (logged) when it is not one."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as error:  # unreadable, half written, not JSON
        log.debug("skipped %s: %s", path, error)
        return None
    if not isinstance(document, dict):
        log.debug("skipped %s: not a JSON object", path)
        return None
    erlang = _erlang(path, document)
    if erlang is None:
        log.debug("skipped %s: no Erlang value in its name or its contents", path)
        return None
    block_list = _block_list(document.get("iter_stats"))
    return ErlangPoint(
        erlang=erlang,
        blocking_mean=_number(document.get("blocking_mean")),
        blocking_variance=_number(document.get("blocking_variance")),
        ci_rate_block=_number(document.get("ci_rate_block")),
        ci_percent_block=_number(document.get("ci_percent_block")),
        iterations=len(block_list),
        block_list=block_list,
        sim_end_time=_text(document.get("sim_end_time")),
        path=path,
    )


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(entry.path) for entry in entries if _is_dir(entry))
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a symlink (FUSION's folder linked from output/)
    except OSError:
        return False


def _result_files(folders: list[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                files += [Path(entry.path) for entry in entries if entry.name.endswith(SUFFIX)]
        except OSError:  # missing, not a folder, not readable: no points there
            continue
    return files


def _erlang(path: Path, document: dict[str, Any]) -> float | None:
    """From the name as FUSION writes it (`300.0_erlang.json`), else an `erlang` key."""
    try:
        value = float(path.name.removesuffix(SUFFIX))
    except ValueError:
        return _number(document.get("erlang"))
    return value if math.isfinite(value) else _number(document.get("erlang"))


def _block_list(iter_stats: object) -> tuple[float, ...]:
    """The longest `sim_block_list` of iter_stats: each saved iteration repeats the earlier.

    FUSION saves some iterations only (the first, the last, every save_step);
    the latest saved one has them all.
    """
    if not isinstance(iter_stats, dict):
        return ()
    best: tuple[float, ...] = ()
    for stats in iter_stats.values():
        values = stats.get("sim_block_list") if isinstance(stats, dict) else None
        if isinstance(values, list) and len(values) > len(best):
            numbers = tuple(number for value in values if (number := _number(value)) is not None)
            if len(numbers) == len(values):  # one bad element: the list is not trusted
                best = numbers
    return best


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
