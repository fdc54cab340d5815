"""The Erlang sweep: one forked worker process per Erlang point, at most one per CPU at once
(or `[general_settings] max_processes`).

Workers (fork context, so they inherit the settings and the routes without pickling)
send one message per iteration on their own pipe; the parent alone writes progress
events and output files, in the order results arrive. Points running at the same time
therefore interleave in progress.jsonl; each point's own events stay in order.

The parent waits on every worker's pipe and on its sentinel (ready once the process has
ended) together, so it sees at once a worker that raised (the worker sends a `Failure`)
and one that ended without finishing its point, killed by the out-of-memory killer say
(the standard-library Pool would wait forever for it). Either is a `WorkerFailed`: the
other workers are stopped, then the error is reported.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from fusion_runner.core import cores
from fusion_runner.core.cores import usable_cpus as usable_cpus  # re-exported: callers use it here
from fusion_runner.refsim import engine, stats
from fusion_runner.refsim.events import ProgressFile
from fusion_runner.refsim.settings import Settings
from fusion_runner.refsim.topology import Network

# Blocked in the parent while it forks a worker, until the worker has set its own handling.
WORKER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
STOP_GRACE_SECONDS = 5.0  # after SIGTERM, a worker still alive is killed

# (iteration (0 = the point started), blocked requests, seconds)
Message = tuple[int, int, float]


@dataclass(frozen=True)
class Failure:
    """What a worker sends instead of a Message when its point raised."""

    message: str  # `Type: text`
    traceback: str


class WorkerFailed(Exception):
    """A worker raised (with its traceback) or ended before finishing its point."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass
class Worker:
    """A running worker process and the parent's end of its pipe."""

    index: int
    process: BaseProcess
    results: Connection


def label(erlang: float) -> str:
    """The Erlang as FUSION writes it in file names: `300.0` (repr of the float)."""
    return repr(float(erlang))


def run(settings: Settings, network: Network, progress: ProgressFile, output_dir: Path) -> None:
    """Run every Erlang point in worker processes; write progress, outputs and `complete`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    progress.start(len(settings.erlangs), settings.max_iters)
    tally = Tally(settings, progress, output_dir)
    running: list[Worker] = []
    try:
        _sweep(settings, network, tally, running)
    finally:
        _stop(running)  # a signal or a failed worker: stop the others before reporting
    progress.complete(tally.summary())


def _sweep(settings: Settings, network: Network, tally: Tally, running: list[Worker]) -> None:
    context = multiprocessing.get_context("fork")
    waiting = deque(range(len(settings.erlangs)))
    # The rule the daemon counts a run's cores by (core/cores.py): keep them one.
    processes = cores.workers(len(settings.erlangs), usable_cpus(), settings.max_processes)
    while waiting or running:
        while waiting and len(running) < processes:
            _start(context, settings, network, waiting.popleft(), running)
        ready = wait(
            [worker.process.sentinel for worker in running]
            + [worker.results for worker in running if not worker.results.closed]
        )
        for worker in list(running):
            if worker.results in ready:
                _receive(worker, tally)
            if worker.process.sentinel in ready:  # ended: all it sent is in the pipe
                _receive(worker, tally)
                worker.process.join()
                running.remove(worker)
                worker.results.close()
                if not tally.done(worker.index):
                    raise WorkerFailed(_died(worker, settings))


def _start(
    context: ForkContext, settings: Settings, network: Network, index: int, running: list[Worker]
) -> None:
    """Fork a worker for point `index` and add it to `running`, with no signal in between."""
    results, writer = context.Pipe(duplex=False)
    process = context.Process(
        target=_run_point,
        args=(settings, network, index, writer),
        name=f"refsim {label(settings.erlangs[index])} Erlang",
        daemon=True,
    )
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    try:
        process.start()
        running.append(Worker(index, process, results))
    finally:
        writer.close()  # the worker's alone now: its pipe reads as ended when it ends
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _receive(worker: Worker, tally: Tally) -> None:
    """Record every message waiting on the worker's pipe; raise its Failure."""
    results = worker.results
    try:
        while not results.closed and results.poll():
            message: Message | Failure = results.recv()
            if isinstance(message, Failure):
                raise WorkerFailed(message.message, message.traceback)
            tally.record(worker.index, *message)
    except EOFError:
        results.close()


def _died(worker: Worker, settings: Settings) -> str:
    code = worker.process.exitcode or 0
    if code < 0:
        try:
            how = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exit status {code}"
    erlang = label(settings.erlangs[worker.index])
    return f"worker process {worker.process.pid} for {erlang} Erlang died ({how})"


def _stop(running: list[Worker]) -> None:
    """End every worker still running (SIGTERM, then SIGKILL after the grace) and reap it."""
    for worker in running:
        worker.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in running:
        worker.process.join(max(deadline - time.monotonic(), 0.0))
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        worker.results.close()
    running.clear()


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

    def done(self, index: int) -> bool:
        """Whether point `index` has all its iterations."""
        return len(self.blocked.get(index, ())) == self.settings.max_iters

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
            **fusion_keys(blocking, mean),
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


def fusion_keys(blocking: list[float], mean: float) -> dict[str, Any]:
    """The keys of FUSION's own `{erlang}_erlang.json`, so one reader serves both.

    `iter_stats` as FUSION keys it (zero-based iteration, as text), each with the
    blocking probabilities up to that iteration; `sim_end_time` in its format.
    """
    return {
        **stats.fusion_blocking(blocking, mean),
        "iter_stats": {
            str(number): {"sim_block_list": blocking[: number + 1]}
            for number in range(len(blocking))
        },
        "sim_end_time": datetime.now().strftime("%m%d_%H_%M_%S_%f"),
    }


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _run_point(settings: Settings, network: Network, index: int, results: Connection) -> None:
    """In the worker: one Erlang point, all its iterations on one Random(seed + index)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's terminate() simply ends us
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends us
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    try:
        erlang, rng = settings.erlangs[index], random.Random(settings.seed + index)
        results.send((0, 0, 0.0))
        for iteration in range(1, settings.max_iters + 1):
            began = time.perf_counter()
            blocked = engine.blocked_requests(settings, network, erlang, rng)
            results.send((iteration, blocked, time.perf_counter() - began))
    except Exception as exc:
        message = "".join(traceback.format_exception_only(exc)).strip()
        results.send(Failure(message, traceback.format_exc()))


