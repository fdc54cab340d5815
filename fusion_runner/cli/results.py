"""`fusion-runner results ID...`: each run's blocking probability per Erlang point.

Per run and Erlang point: the mean blocking probability, its confidence
interval's half width (mean ± ci) and the iterations behind it. Taken from the
daemon's table (`fusion_runner_results`: filled from the `erlang_complete`
progress events while a run runs, then from its `output/*_erlang.json` when it
ends), else from the run folder's `output/*_erlang.json` (a database of an
older daemon, or a run ended before the table existed).

As text, one row per Erlang load with a column per run; `--csv` one header
line and one line per (run, Erlang); `--json` a list of {"id", "name",
"points": [{"erlang", "blocking_mean", "blocking_ci", "iterations"}]}.
`--plot FILE.png` draws blocking probability against load, a line per run
with its confidence band (matplotlib, the `plot` extra; Agg, no display).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from fusion_runner.cli import lookup
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK
from fusion_runner.core import config as config_module
from fusion_runner.core import results as results_module
from fusion_runner.core.store import Store

MISSING_MATPLOTLIB = (
    "--plot needs matplotlib, which is not installed: pip install 'fusion-runner[plot]'"
)
CSV_HEADER = ("id", "name", "erlang", "blocking_mean", "blocking_ci", "iterations")


@dataclass(frozen=True)
class Point:
    erlang: float
    blocking_mean: float | None
    blocking_ci: float | None  # the confidence interval's half width
    iterations: int | None


@dataclass(frozen=True)
class RunResults:
    id: str
    name: str | None
    points: list[Point]

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name,
                "points": [asdict(point) for point in self.points]}


def cmd_results(args: argparse.Namespace, settings: config_module.Config) -> int:
    if args.plot is not None and not matplotlib_available():
        print(f"fusion-runner: {MISSING_MATPLOTLIB}", file=sys.stderr)
        return EXIT_FAILURE
    with lookup.open_store(settings) as store:
        run_ids = list(dict.fromkeys(lookup.resolve(store, given) for given in args.ids))
        runs = gather(store, settings, run_ids)
    if args.json:
        print(json.dumps([run.json() for run in runs], indent=2))
    elif args.csv:
        write_csv(runs)
    else:
        print("\n".join(table_lines(runs)))
    if args.plot is not None:
        if not any(point.blocking_mean is not None for run in runs for point in run.points):
            print("fusion-runner: --plot: no results to plot yet", file=sys.stderr)
            return EXIT_FAILURE
        plot(runs, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


def gather(store: Store, settings: config_module.Config, run_ids: list[str]) -> list[RunResults]:
    """Each run's points: the table's, else its run folder's results files."""
    rows = store.get_runs(run_ids)
    try:
        table = store.run_results(run_ids)
    except SQLAlchemyError:  # a database of a daemon older than the results table
        table = {}
    found: list[RunResults] = []
    for run_id in run_ids:
        row = rows.get(run_id)
        name = row.name if row is not None else None
        if run_id in table:
            points = [Point(r.erlang, r.blocking_mean, r.blocking_ci, r.iterations)
                      for r in table[run_id]]
        else:
            points = file_points(store, settings, run_id)
        found.append(RunResults(run_id, name, points))
    return found


def file_points(store: Store, settings: config_module.Config, run_id: str) -> list[Point]:
    """The points of the run folder's `output/*_erlang.json` (FUSION's linked folders too)."""
    paths = lookup.run_paths(store, settings, run_id)
    if paths is None:
        return []
    by_erlang = {point.erlang: point for point in
                 results_module.read_points(paths.output_dir, subfolders=True)}
    return [Point(point.erlang, point.blocking_mean, point.ci_rate_block,
                  point.iterations or None) for point in by_erlang.values()]


# --- text and CSV --------------------------------------------------------------------


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def cell(point: Point | None) -> str:
    """`0.01234 ± 0.0005 (5 it)`; `-` for what is not known."""
    if point is None:
        return "-"
    text = number(point.blocking_mean)
    if point.blocking_ci is not None:
        text += f" ± {number(point.blocking_ci)}"
    if point.iterations is not None:
        text += f" ({point.iterations} it)"
    return text


def table_lines(runs: list[RunResults], *, headers: bool = True) -> list[str]:
    """One row per Erlang load, a column per run (ids, then names, as headers)."""
    erlangs = sorted({point.erlang for run in runs for point in run.points})
    if not erlangs:
        return ["(no results yet)"]
    by_run = [{point.erlang: point for point in run.points} for run in runs]
    grid = [[f"{erlang:g}", *(cell(points.get(erlang)) for points in by_run)]
            for erlang in erlangs]
    if headers:
        if any(run.name for run in runs):
            grid.insert(0, ["", *(run.name or "" for run in runs)])
        grid.insert(0, ["ERLANG", *(run.id for run in runs)])
    else:
        grid.insert(0, ["ERLANG", "BLOCKING (mean ± ci, iterations)"])
    widths = [max(len(line[column]) for line in grid) for column in range(len(grid[0]))]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
            .rstrip() for line in grid]


def write_csv(runs: list[RunResults]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for run in runs:
        for point in run.points:
            writer.writerow([run.id, run.name or "", repr(point.erlang),
                             *("" if value is None else repr(value) for value in
                               (point.blocking_mean, point.blocking_ci, point.iterations))])


# --- the plot ------------------------------------------------------------------------


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(runs: list[RunResults], path: Path) -> None:
    """Blocking probability against load, a line per run, its confidence band shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)  # the Agg backend: no display, whatever MPLBACKEND says
    axes = figure.add_subplot()
    for run in runs:
        points = [point for point in run.points if point.blocking_mean is not None]
        if not points:
            continue
        loads = [point.erlang for point in points]
        means = [point.blocking_mean or 0.0 for point in points]
        label = f"{run.name} ({run.id})" if run.name else run.id
        (line,) = axes.plot(loads, means, marker="o", label=label)
        banded = [(point.erlang, mean - (point.blocking_ci or 0.0),
                   mean + (point.blocking_ci or 0.0)) for point, mean in zip(
                  points, means, strict=True)]
        axes.fill_between([load for load, _, _ in banded], [max(low, 0.0) for _, low, _ in banded],
                          [high for _, _, high in banded], color=line.get_color(), alpha=0.2,
                          linewidth=0)
    axes.set_xlabel("Traffic load (Erlang)")
    axes.set_ylabel("Blocking probability")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")
