"""A supervisor built the way FUSION's GUI run manager works today, measured beside
fusion-runner through the same `runs` table and the same simulations.

    python -m bench.baseline --database-url URL --runs-dir DIR --sim FILE [--max-concurrent-runs N]

Its design, and nothing better (SPEC §10, FUSION-FACTS):
- once a second it reads the table: PENDING rows are started while fewer than
  `max_concurrent_runs` runs are live (the GUI starts a run in the request that
  creates it; here the request is the row), each with
  `Popen(start_new_session=True)`, and the row is set RUNNING with its pid;
- once a second each live run is checked: `killpg(pgid, 0)` for liveness and
  `poll()` for its exit, which ends the row COMPLETED or FAILED;
- progress is read only when polled, every 0.5 s: the last complete line of
  each live run's progress.jsonl is written to the progress columns;
- a row no longer RUNNING (a client's CANCELLED) is stopped as the GUI's delete
  stops it: SIGTERM to the group, a fixed 2 s sleep, SIGKILL, and the loop
  waits meanwhile, as the GUI's request does.
It prints `action=ready` once its loop runs, and stops on SIGTERM, leaving its
runs alone.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
    update,
)

TABLE_PERIOD = 1.0  # the table, liveness and exits: once a second
PROGRESS_PERIOD = 0.5  # progress: when the GUI's page polls
CANCEL_SLEEP = 2.0  # between SIGTERM and SIGKILL, whatever the run does

metadata = MetaData()
runs = Table(
    "runs", metadata,
    Column("id", String(12), primary_key=True),
    Column("name", String(255)),
    Column("status", String(20), nullable=False, index=True),
    Column("config_json", Text, nullable=False),
    Column("template", String(100), nullable=False),
    Column("pid", Integer),
    Column("pgid", Integer),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime),
    Column("completed_at", DateTime),
    Column("error_message", Text),
    Column("current_erlang", Float),
    Column("total_erlangs", Integer),
    Column("current_iteration", Integer),
    Column("total_iterations", Integer),
)
PROGRESS_KEYS = {"erlang": "current_erlang", "total_erlangs": "total_erlangs",
                 "iteration": "current_iteration", "total_iterations": "total_iterations"}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class LiveRun:
    process: subprocess.Popen[bytes]
    progress_file: Path
    log: IO[bytes]
    progress_offset: int = 0
    shown: dict[str, Any] = field(default_factory=dict)


class Baseline:
    def __init__(self, engine: Engine, runs_dir: Path, sim: Path, slots: int) -> None:
        self.engine = engine
        self.runs_dir = runs_dir
        self.sim = sim
        self.slots = slots
        self.live: dict[str, LiveRun] = {}

    # -- once a second -------------------------------------------------------
    def check_table(self) -> None:
        self.check_processes()
        self.stop_cancelled()
        self.start_pending()

    def check_processes(self) -> None:
        for run_id, run in list(self.live.items()):
            code = run.process.poll()
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, 0)  # the GUI's liveness check
                    continue
                code = -1
            self.finish(run_id, "COMPLETED" if code == 0 else "FAILED",
                        None if code == 0 else f"exit status {code}")

    def finish(self, run_id: str, status: str, error: str | None) -> None:
        self.forget(run_id)
        with self.engine.begin() as db:
            db.execute(update(runs).where(runs.c.id == run_id, runs.c.status == "RUNNING")
                       .values(status=status, error_message=error, completed_at=utcnow()))

    def forget(self, run_id: str) -> None:
        run = self.live.pop(run_id)
        run.log.close()

    def stop_cancelled(self) -> None:
        if not self.live:
            return
        with self.engine.connect() as db:
            still = {row.id for row in db.execute(
                select(runs.c.id).where(runs.c.id.in_(self.live), runs.c.status == "RUNNING"))}
        for run_id in [run_id for run_id in self.live if run_id not in still]:
            self.stop(run_id)

    def stop(self, run_id: str) -> None:
        """SIGTERM to the group, the fixed sleep, SIGKILL: the GUI's delete."""
        process = self.live[run_id].process
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            if signum == signal.SIGTERM:
                time.sleep(CANCEL_SLEEP)
        process.wait()
        self.forget(run_id)
        with self.engine.begin() as db:
            db.execute(update(runs).where(runs.c.id == run_id, runs.c.status == "CANCELLED")
                       .values(completed_at=utcnow()))

    def start_pending(self) -> None:
        free = self.slots - len(self.live)
        if free <= 0:
            return
        with self.engine.connect() as db:
            rows = db.execute(select(runs.c.id, runs.c.config_json)
                              .where(runs.c.status == "PENDING")
                              .order_by(runs.c.created_at).limit(free)).all()
        for row in rows:
            self.start(row.id, row.config_json)

    def start(self, run_id: str, config_json: str) -> None:
        run_dir = self.runs_dir / run_id
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "output").mkdir(exist_ok=True)
        write_ini(run_dir / "config.ini", json.loads(config_json))
        env = {**os.environ, "FUSION_RUN_ID": run_id, "FUSION_RUN_DIR": str(run_dir),
               "FUSION_CONFIG_FILE": str(run_dir / "config.ini"),
               "FUSION_PROGRESS_FILE": str(run_dir / "progress.jsonl"),
               "FUSION_OUTPUT_DIR": str(run_dir / "output")}
        log = open(run_dir / "logs" / "sim.log", "ab")  # noqa: SIM115 (closed in forget)
        process = subprocess.Popen([sys.executable, "-S", str(self.sim)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=run_dir,
                                   start_new_session=True)
        self.live[run_id] = LiveRun(process, run_dir / "progress.jsonl", log)
        with self.engine.begin() as db:
            claimed = db.execute(
                update(runs).where(runs.c.id == run_id, runs.c.status == "PENDING")
                .values(status="RUNNING", pid=process.pid, pgid=process.pid,
                        started_at=utcnow())).rowcount
        if not claimed:  # cancelled meanwhile
            self.stop(run_id)

    # -- every 0.5 s -----------------------------------------------------------
    def read_progress(self) -> None:
        for run_id, run in self.live.items():
            columns = last_progress(run)
            if columns and columns != run.shown:
                run.shown = columns
                with self.engine.begin() as db:
                    db.execute(update(runs).where(runs.c.id == run_id,
                                                  runs.c.status == "RUNNING").values(**columns))


def last_progress(run: LiveRun) -> dict[str, Any]:
    """The progress columns the newest complete line of the run's file gives."""
    try:
        with open(run.progress_file, "rb") as file:
            file.seek(run.progress_offset)
            chunk = file.read()
    except FileNotFoundError:
        return {}
    end = chunk.rfind(b"\n")
    if end < 0:
        return {}
    run.progress_offset += end + 1
    line = chunk[:end].rsplit(b"\n", 1)[-1]
    try:
        values = json.loads(line)
    except ValueError:
        return {}
    if not isinstance(values, dict):
        return {}
    return {column: values[key] for key, column in PROGRESS_KEYS.items() if key in values}


def write_ini(path: Path, config: dict[str, dict[str, object]]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    for section, values in config.items():
        parser[section] = {key: str(value) for key, value in values.items()}
    with open(path, "w") as file:
        parser.write(file)


def engine_for(url: str) -> Engine:
    # psycopg 3 is the driver this project has; a bare postgresql:// means psycopg2.
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return create_engine(url)


def serve(baseline: Baseline) -> None:
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    print("action=ready", flush=True)
    next_table = next_progress = time.monotonic()
    while not stopping:
        now = time.monotonic()
        if now >= next_table:
            baseline.check_table()
            next_table = now + TABLE_PERIOD
        if now >= next_progress:
            baseline.read_progress()
            next_progress = now + PROGRESS_PERIOD
        time.sleep(max(min(next_table, next_progress) - time.monotonic(), 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--sim", type=Path, required=True, help="the simulation's script")
    parser.add_argument("--max-concurrent-runs", type=int, default=1)
    args = parser.parse_args(argv)
    engine = engine_for(args.database_url)
    metadata.create_all(engine, checkfirst=True)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    serve(Baseline(engine, args.runs_dir, args.sim.resolve(), args.max_concurrent_runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
