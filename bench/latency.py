"""Measure SPEC §10's latencies against a real daemon on a SQLite file (SPEC §10's targets).

    .venv/bin/python bench/latency.py [--samples 100]

Each step is timed from the client's committed write (or the simulation's
exit) to the column the daemon commits, using the daemon's own timestamps
(`started_at`, `completed_at`) where the row has one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil

SIM = Path(__file__).with_name("sim.py")


def utc_text() -> str:
    return datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.database = root / "runs.db"
        argv = [sys.executable, "-m", "fusion_runner", "daemon",
                "--database-url", f"sqlite:///{self.database}", "--runs-dir", str(root / "runs"),
                "--sim-command", f"{{python}} -S {SIM}", "--max-concurrent-runs", "10",
                "--worker-id", "bench", "--stop-grace-seconds", "5"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
        self.log = open(root / "daemon.log", "wb")  # noqa: SIM115
        self.daemon = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        self.db = sqlite3.connect(self.database, timeout=10, isolation_level=None)
        self.wait(lambda: b"action=ready" in (root / "daemon.log").read_bytes(), 15)

    def close(self) -> None:
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(10)
        for (pgid,) in self.db.execute("SELECT pgid FROM runs WHERE pgid IS NOT NULL"):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)

    @staticmethod
    def wait(condition: Callable[[], object], timeout: float = 10.0, pause: float = 0.01) -> None:
        """Poll slowly unless told otherwise: where the row carries the daemon's own
        timestamp, polling fast would only take CPU from what is measured."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark step timed out")
            time.sleep(pause)

    def submit(self, bench: dict[str, object]) -> tuple[str, float]:
        run_id = os.urandom(6).hex()
        self.db.execute(
            "INSERT INTO runs (id, name, status, config_json, template, created_at) "
            "VALUES (?, 'bench', 'PENDING', ?, 'bench', ?)",
            (run_id, json.dumps({"bench": bench}), utc_text()),
        )
        return run_id, time.time()

    def column(self, run_id: str, name: str) -> object:
        return self.db.execute(f"SELECT {name} FROM runs WHERE id = ?", (run_id,)).fetchone()[0]

    def until_final(self, run_id: str) -> None:
        self.wait(lambda: self.column(run_id, "completed_at") is not None)

    def pickup(self) -> float:
        run_id, committed = self.submit({"mode": "wait"})
        self.wait(lambda: self.column(run_id, "started_at") is not None)
        latency = epoch(str(self.column(run_id, "started_at"))) - committed
        self.db.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))
        self.until_final(run_id)
        return latency

    def cancel(self) -> float:
        run_id, _ = self.submit({"mode": "workers", "workers": 4})
        self.wait(lambda: self.column(run_id, "pid") is not None)
        pid = int(str(self.column(run_id, "pid")))
        self.wait(lambda: len(psutil.Process(pid).children(recursive=True)) >= 5)
        self.db.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))
        committed = time.time()
        self.until_final(run_id)
        return epoch(str(self.column(run_id, "completed_at"))) - committed

    def exit(self) -> float:
        run_id, _ = self.submit({"mode": "exit_at", "at": time.time() + 0.3})
        self.until_final(run_id)
        exited_at = float((self.root / "runs" / run_id / "output" / "exited_at").read_text())
        return epoch(str(self.column(run_id, "completed_at"))) - exited_at

    def progress(self, run_id: str, progress: Path, n: int) -> float:
        with open(progress, "a") as file:
            file.write(json.dumps({"iteration": n}) + "\n")
        written = time.time()
        # No timestamp in the row for this one: watch closely.
        self.wait(lambda: self.column(run_id, "current_iteration") == n, pause=0.0002)
        return time.time() - written


def stream_load(bench: Bench, runs: int, rate: float, seconds: float) -> None:
    """`runs` simulations each appending `rate` lines a second: the daemon's CPU and lag."""
    ids = [bench.submit({"mode": "stream", "rate": rate, "seconds": seconds})[0]
           for _ in range(runs)]
    bench.wait(lambda: all(bench.column(run_id, "pid") for run_id in ids))
    files = [bench.root / "runs" / run_id / "progress.jsonl" for run_id in ids]
    daemon = psutil.Process(bench.daemon.pid)
    lags: list[float] = []
    before, measured_from = sum(daemon.cpu_times()[:2]), time.time()
    deadline = measured_from + seconds - 0.5
    while time.time() < deadline:
        time.sleep(0.25)
        # lines in the file that the row does not show yet, in seconds of writing
        behind = [_lines(path) - int(str(bench.column(run_id, "current_iteration") or 0))
                  for run_id, path in zip(ids, files, strict=True)]
        lags.append(max(behind) / rate)
    elapsed = time.time() - measured_from
    cpu = (sum(daemon.cpu_times()[:2]) - before) / elapsed * 100
    for run_id in ids:
        bench.until_final(run_id)
    written = sum(_lines(path) for path in files) / (seconds + 0.0)
    half = len(lags) // 2
    print(f"{runs} runs x {rate:g} lines/s ({written:.0f} lines/s written in all): "
          f"daemon {cpu:.1f} % of one core (target <= 15 %); "
          f"lag {max(lags[:half]) * 1000:.0f} ms in the first half, "
          f"{max(lags[half:]) * 1000:.0f} ms in the second (should not grow)")


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def report(name: str, samples: list[float], target: tuple[float, float]) -> None:
    ms = sorted(sample * 1000 for sample in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    verdict = "ok" if p50 <= target[0] and p99 <= target[1] else "MISSED"
    print(f"{name:<34} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
          f"(target {target[0]:g} / {target[1]:g} ms, n={len(ms)})  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(Path(folder))
        try:
            samples = [bench.pickup() for _ in range(args.samples)]
            report("PENDING -> spawned, pid recorded", samples, (5, 20))
            samples = [bench.cancel() for _ in range(args.samples)]
            report("CANCELLED -> tree gone, completed_at", samples, (10, 50))
            report("simulation exit -> final status", [bench.exit() for _ in range(args.samples)],
                   (5, 20))
            run_id, _ = bench.submit({"mode": "wait"})
            bench.wait(lambda: bench.column(run_id, "pid") is not None)
            progress = Path(folder) / "runs" / run_id / "progress.jsonl"
            samples = []
            for n in range(1, args.samples + 1):
                samples.append(bench.progress(run_id, progress, n))
                time.sleep(0.06)  # past the coalescing interval: each line is a leading edge
            report("progress line -> column committed", samples, (2, 20))
            bench.db.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))
            bench.until_final(run_id)
            stream_load(bench, runs=10, rate=1000, seconds=6)
            idle = psutil.Process(bench.daemon.pid)
            before = sum(idle.cpu_times()[:2])
            time.sleep(10)
            print(f"{'idle daemon':<34} {(sum(idle.cpu_times()[:2]) - before) / 10 * 100:.2f} % "
                  "of one core (target < 0.5 %)")
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
