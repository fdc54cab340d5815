"""A supervisor started on the bench's database, and the client's side of the table:
rows committed PENDING or CANCELLED as a GUI commits them, columns read back."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.database import Target, epoch
from bench.supervisors import BASELINE, Supervisor

BULK_ROWS = 1000  # rows per statement batch of a bulk insert


class Session:
    def __init__(self, system: str, target: Target, root: Path, slots: int,
                 profile: Path | None = None) -> None:
        self.system = system
        self.root = root
        self.postgres = target.postgres
        # A wake-up missed on PostgreSQL waits for the 30 s fallback poll, and the
        # baseline's cancel alone takes 2 s: let a slow sample show, not end the bench.
        self.timeout = 60.0 if target.postgres or system == BASELINE else 15.0
        # The baseline works in ticks of a second: a sample that started right after
        # the step before it would start at the same point of its tick every time,
        # and always wait the whole tick (or none of it). A random pause over a
        # tick spreads the samples over it, as a user's clicks would fall.
        self.period = 1.0 if system == BASELINE else 0.05
        # how long after its commit a run surely executes (the baseline's pickup
        # takes up to a tick)
        self.lead = 1.5 if system == BASELINE else 0.3
        self.db = target.connect()
        self.submitted: list[str] = []
        try:
            self.supervisor = Supervisor(system, target, root, slots, profile)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.supervisor.stop()
        # Runs the supervisor left live (a detaching daemon, a failed step): ours only.
        for run_id in self.submitted:
            rows = self.sql("SELECT pgid FROM runs WHERE id = ? AND completed_at IS NULL "
                            "AND pgid IS NOT NULL", (run_id,))
            for (pgid,) in rows:
                with contextlib.suppress(OSError):
                    os.killpg(int(pgid), signal.SIGKILL)
        self.db.close()

    def sql(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.db.rows(statement, params)

    def wait(self, condition: Callable[[], object], timeout: float | None = None,
             pause: float = 0.01) -> None:
        """Poll slowly unless told otherwise: where the row carries the supervisor's own
        timestamp, polling fast would only take CPU from what is measured."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.system}: a benchmark step timed out; its log:\n"
                                   + self.supervisor.log_tail())
            time.sleep(pause)

    def watch(self, condition: Callable[[], object]) -> float:
        """Poll closely (0.2 ms) for 20 ms, then every 2 ms; when the condition held."""
        started = time.monotonic()
        deadline = started + self.timeout
        while not condition():
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{self.system}: a benchmark step timed out")
            time.sleep(0.0002 if now - started < 0.02 else 0.002)
        return time.time()

    def random_phase(self) -> None:
        time.sleep(random.uniform(0, self.period))

    @staticmethod
    def new_id() -> str:
        return os.urandom(6).hex()

    def submit(self, bench: dict[str, object], name: str = "bench") -> tuple[str, float]:
        run_id = self.new_id()
        self.submitted.append(run_id)
        self.sql("INSERT INTO runs (id, name, status, config_json, template, created_at) "
                 "VALUES (?, ?, 'PENDING', ?, 'bench', ?)",
                 (run_id, name, json.dumps({"bench": bench}), self.db.now()))
        return run_id, time.time()

    def submit_many(self, count: int, bench: dict[str, object], name: str,
                    held: bool = False) -> tuple[list[str], float]:
        """`count` rows in one transaction (held ones with their meta rows)."""
        ids = [self.new_id() for _ in range(count)]
        self.submitted += [] if held else ids
        config, now = json.dumps({"bench": bench}), self.db.now()
        for start in range(0, count, BULK_ROWS):
            chunk = ids[start:start + BULK_ROWS]
            statements: list[tuple[str, Sequence[Sequence[object]]]] = [(
                "INSERT INTO runs (id, name, status, config_json, template, created_at) "
                "VALUES (?, ?, 'PENDING', ?, 'bench', ?)",
                [(run_id, name, config, now) for run_id in chunk])]
            if held:
                statements.insert(0, (
                    "INSERT INTO fusion_runner_meta (run_id, parent_id, priority, held) "
                    "VALUES (?, NULL, 0, ?)", [(run_id, True) for run_id in chunk]))
            self.db.many(statements)
        return ids, time.time()

    def cancel(self, run_id: str) -> None:
        self.sql("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))

    def column(self, run_id: str, name: str) -> Any:
        return self.sql(f"SELECT {name} FROM runs WHERE id = ?", (run_id,))[0][0]

    def final(self, run_id: str) -> bool:
        return self.column(run_id, "completed_at") is not None

    def until_final(self, run_id: str) -> float:
        self.wait(lambda: self.final(run_id))
        return epoch(self.column(run_id, "completed_at"))

    def note(self, run_id: str, name: str) -> float | None:
        """A time the simulation noted in its output folder (bench/sim.py), if yet."""
        try:
            text = (self.root / "runs" / run_id / "output" / name).read_text()
        except FileNotFoundError:
            return None
        return float(text) if text else None

    def progress_file(self, run_id: str) -> Path:
        return self.root / "runs" / run_id / "progress.jsonl"

    def live_runs(self, count: int) -> tuple[list[str], float]:
        """`count` simulations that wait and write nothing, once all have begun; how
        long from the commit until all were spawned, in seconds."""
        ids, committed = self.submit_many(count, {"mode": "wait"}, "live")
        self.wait(lambda: self.count(ids, "started_at IS NOT NULL") == count, timeout=120)
        last = max(epoch(started) for (started,) in self.sql(
            f"SELECT started_at FROM runs WHERE id IN ({marks(ids)})", ids))
        self.wait(lambda: all(self.note(run_id, "began_at") for run_id in ids), timeout=120)
        return ids, last - committed

    def count(self, ids: Sequence[str], condition: str) -> int:
        rows = self.sql(f"SELECT COUNT(*) FROM runs WHERE id IN ({marks(ids)}) AND {condition}",
                        ids)
        return int(rows[0][0])

    def end_runs(self, ids: Sequence[str]) -> None:
        """End live runs not measured: SIGTERM to each run's group ends its simulation
        (the baseline would take 2 s a cancel, one after another); both supervisors
        then see an exit."""
        for (pgid,) in self.sql(f"SELECT pgid FROM runs WHERE id IN ({marks(ids)}) "
                                "AND completed_at IS NULL AND pgid IS NOT NULL", ids):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgid), signal.SIGTERM)
        self.wait(lambda: self.count(ids, "completed_at IS NULL") == 0, timeout=600,
                  pause=0.05)


def marks(ids: Sequence[str]) -> str:
    return ", ".join("?" * len(ids))


@contextlib.contextmanager
def session(system: str, target: Target, root: Path, slots: int,
            profile: Path | None = None) -> Iterator[Session]:
    started = Session(system, target, root, slots, profile)
    try:
        yield started
    finally:
        started.close()
