"""The Erlang sweep: one pool task per Erlang point, results streamed back to the parent.

Workers (fork context, so they inherit the settings, the routes and the queue without
pickling) put one message per iteration on a single queue; the parent alone writes
progress events and output files, in the order results arrive. Points running at the
same time therefore interleave in progress.jsonl; each point's own events stay in order.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import random
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

from fusion_runner.refsim import engine, stats
from fusion_runner.refsim.events import ProgressFile
from fusion_runner.refsim.settings import Settings
from fusion_runner.refsim.topology import Network

POLL_SECONDS = 0.2  # how often the parent looks for a worker's exception while idle

# (point index, iteration (0 = the point started), blocked requests, seconds)
Message = tuple[int, int, int, float]


@dataclass(frozen=True)
class Worker:
    """What a pool worker needs, set once per worker by `_init_worker`."""

    settings: Settings
    network: Network
    results: multiprocessing.Queue[Message]


_worker: Worker | None = None


def label(erlang: float) -> str:
    """The Erlang as FUSION writes it in file names: `300.0` (repr of the float)."""
    return repr(float(erlang))


def run(settings: Settings, network: Network, progress: ProgressFile, output_dir: Path) -> None:
    """Run every Erlang point in a pool; write progress, outputs and the `complete` event."""
    output_dir.mkdir(parents=True, exist_ok=True)
    progress.start(len(settings.erlangs), settings.max_iters)
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[Message] = context.Queue()
    tally = Tally(settings, progress, output_dir)
    processes = min(os.cpu_count() or 1, len(settings.erlangs))
    pool = context.Pool(processes, _init_worker, (Worker(settings, network, results),))
    try:
        _collect(pool.map_async(_run_point, range(len(settings.erlangs)), 1), results, tally)
    except BaseException:
        pool.terminate()  # a signal or a worker's exception: stop the others before reporting
        raise
    pool.close()
    pool.join()
    progress.complete(tally.summary())


def _collect(
    done: AsyncResult[list[None]], results: multiprocessing.Queue[Message], tally: Tally
) -> None:
    while not tally.finished():
        try:
            message = results.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if done.ready():
                done.get()  # re-raises a worker's exception; on success messages are in flight
            continue
        tally.record(*message)


@dataclass
class Tally:
    """Per-point results as they arrive; emits events and writes each point's file."""

    settings: Settings
    progress: ProgressFile
    output_dir: Path
    blocked: dict[int, list[int]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    began: float = field(default_factory=time.perf_counter)

    def finished(self) -> bool:
        return len(self.means) == len(self.settings.erlangs)

    def record(self, index: int, iteration: int, blocked: int, seconds: float) -> None:
        erlang, total = self.settings.erlangs[index], self.settings.max_iters
        if iteration == 0:
            self.blocked[index] = []
            self.progress.erlang_start(erlang, index, len(self.settings.erlangs))
            return
        self.blocked[index].append(blocked)
        self.seconds += seconds
        self.progress.iteration(erlang, iteration, total, blocked / self.settings.num_requests)
        if iteration == total:
            self._complete(index)

    def _complete(self, index: int) -> None:
        erlang = self.settings.erlangs[index]
        blocking = [count / self.settings.num_requests for count in self.blocked[index]]
        mean, lower, upper = stats.mean_ci(blocking)
        lower, upper = max(lower, 0.0), min(upper, 1.0)  # a probability's interval
        self.means[label(erlang)] = mean
        self.progress.erlang_complete(erlang, mean, lower, upper)
        document = {
            "erlang": erlang, "seed": self.settings.seed + index,
            "num_requests": self.settings.num_requests, "blocking_mean": mean,
            "ci_lower": lower, "ci_upper": upper, "ci_method": "student-t 95%",
            "iterations": [
                {"iteration": number, "blocked": count, "blocking_prob": probability}
                for number, (count, probability) in enumerate(
                    zip(self.blocked[index], blocking, strict=True), start=1
                )
            ],
        }
        _write_json(self.output_dir / f"{label(erlang)}_erlang.json", document)

    def summary(self) -> dict[str, Any]:
        requests = self.settings.num_requests * self.settings.max_iters * len(self.means)
        wall = time.perf_counter() - self.began
        return {
            "total_requests": requests, "elapsed_seconds": wall,
            "requests_per_second": requests / wall if wall > 0 else 0.0,
            "requests_per_worker_second": requests / self.seconds if self.seconds else 0.0,
            "mean_blocking": self.means,
        }


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _init_worker(worker: Worker) -> None:
    """Runs in each new worker: the parent's signal handlers are not the worker's."""
    global _worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() must simply end it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends us
    _worker = worker


def _run_point(index: int) -> None:
    """One Erlang point, all its iterations on one Random(seed + index)."""
    if _worker is None:
        raise RuntimeError("refsim worker not initialised")
    settings, results = _worker.settings, _worker.results
    erlang, rng = settings.erlangs[index], random.Random(settings.seed + index)
    results.put((index, 0, 0, 0.0))
    for iteration in range(1, settings.max_iters + 1):
        began = time.perf_counter()
        blocked = engine.blocked_requests(settings, _worker.network, erlang, rng)
        results.put((index, iteration, blocked, time.perf_counter() - began))
