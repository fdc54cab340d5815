"""`fusion-runner demo`: the main job end to end on the embedded defaults.

It starts a daemon as a child process on a fresh database in a demo folder,
queues three reference simulations built from FUSION's minimal template, shows
their progress, cancels the third partway, stops the daemon and prints what
happened. Everything goes through the runs table, as a GUI would do it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from fusion_runner.cli import watch
from fusion_runner.cli.exitcodes import EXIT_FAILURE, EXIT_OK
from fusion_runner.core import inifile, results, rundir
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store

DEADLINE_SECONDS = 120.0
REFRESH_SECONDS = 0.1
# (name, overrides of general_settings). The third is cancelled once it has
# reported its first iteration.
RUNS: Sequence[tuple[str, dict[str, object]]] = (
    ("light-load", {"erlang_start": 200, "erlang_stop": 400, "erlang_step": 100}),
    ("heavy-load", {"erlang_start": 500, "erlang_stop": 700, "erlang_step": 100}),
    ("to-cancel", {"erlang_start": 300, "erlang_stop": 700, "erlang_step": 100,
                   "num_requests": 400_000}),
)
COMMON: dict[str, object] = {"num_requests": 40_000, "max_iters": 3, "seed": 7}


def run_demo(folder: Path, out: TextIO = sys.stdout) -> int:
    folder = folder.resolve()
    database, runs_dir = folder / "runs.db", folder / "runs"
    _clear(folder, database, runs_dir)
    print(f"demo folder: {folder}  (daemon log: {folder / 'daemon.log'})", file=out)
    daemon = _start_daemon(folder, database, runs_dir)
    store = Store.open(f"sqlite:///{database}")
    try:
        ids = [_submit(store, name, overrides) for name, overrides in RUNS]
        print(f"submitted {len(ids)} runs; at most 2 run at once\n", file=out)
        rows = _follow(store, ids, out)
    finally:
        _stop_daemon(daemon)
        store.close()
    _print_outcomes(rows, runs_dir, out)
    expected = [RunStatus.COMPLETED, RunStatus.COMPLETED, RunStatus.CANCELLED]
    return EXIT_OK if [row.status for row in rows] == expected else EXIT_FAILURE


def _clear(folder: Path, database: Path, runs_dir: Path) -> None:
    # Only what an earlier demo made here, never anything else in the folder.
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    shutil.rmtree(runs_dir, ignore_errors=True)


def _start_daemon(folder: Path, database: Path, runs_dir: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "fusion_runner", "daemon",
            "--database-url", f"sqlite:///{database}", "--runs-dir", str(runs_dir),
            "--max-concurrent-runs", "2", "--worker-id", "demo", "--stop-grace-seconds", "5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    with open(folder / "daemon.log", "wb") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=10)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _template() -> dict[str, dict[str, object]]:
    source = resources.files("fusion_runner") / "data" / "fusion_minimal.ini"
    with resources.as_file(source) as path:
        return inifile.read_ini(path)


def _submit(store: Store, name: str, overrides: dict[str, object]) -> str:
    config = _template()
    config["general_settings"] |= COMMON | overrides
    run_id = rundir.new_run_id()
    store.insert_run(run_id, name=name, config_json=json.dumps(config),
                     template="fusion_minimal.ini")
    return run_id


def _follow(store: Store, ids: list[str], out: TextIO) -> list[Any]:
    """Draw the runs as `watch` does until every one has ended; cancel the last partway."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    cancel_sent = False
    followed = watch.Watch(store, ids)
    with watch.Display(Console(file=out, highlight=False)) as display:
        while True:
            followed.poll()
            display.update(followed.shown(), utcnow())
            last = followed.rows.get(ids[-1])
            if not cancel_sent and last is not None and (last.current_iteration or 0) >= 1:
                store.cancel(last.id)
                cancel_sent = True
                display.note(f"-- cancelled {last.id} ({last.name}) partway")
            if followed.ended():
                break
            if time.monotonic() > deadline:
                display.note("-- the demo took too long; stopping")
                break
            time.sleep(REFRESH_SECONDS)
    return [store.get_run(run_id) for run_id in ids]


def _print_outcomes(rows: list[Any], runs_dir: Path, out: TextIO) -> None:
    print("\noutcomes:", file=out)
    print(f"  {'ID':<12}  {'NAME':<12}  {'STATUS':<9}  DETAIL", file=out)
    for row in rows:
        detail = (row.error_message or "").splitlines()[0] if row.error_message else ""
        print(f"  {row.id:<12}  {row.name:<12}  {row.status:<9}  {detail}", file=out)
    print("\nmean blocking probability per Erlang (FUSION's 90 % confidence interval):",
          file=out)
    for row in rows:
        if row.status == RunStatus.COMPLETED:
            output_dir = rundir.RunPaths.under(runs_dir, row.id).output_dir
            for point in results.read_points(output_dir):
                print(f"  {row.name:<12}  {point.erlang:>6.0f} Erlang  "
                      f"{_probability(point.blocking_mean)}  {_interval(point)}", file=out)


def _probability(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _interval(point: results.ErlangPoint) -> str:
    if point.ci_lower is None or point.ci_upper is None:
        return "[no interval]"  # one iteration, or no blocking at all
    # A probability's interval: FUSION's normal approximation may pass 0 or 1.
    lower, upper = max(point.ci_lower, 0.0), min(point.ci_upper, 1.0)
    return f"[{lower:.4f}, {upper:.4f}]"

