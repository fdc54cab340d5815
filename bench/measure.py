"""Each figure measured on one session: client-side steps timed from the client's
commit (or the simulation's own noted time) to what the supervisor commits, using
the supervisor's timestamps (`started_at`, `completed_at`) where the row has one."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from bench.database import epoch
from bench.session import Session
from bench.supervisors import FUSION_RUNNER

MS = 1000.0
POOL_WORKERS = 4
PAIR_GAP = 0.005  # two lines this far apart: the second must not wait for a timer
LINE_GAP = 0.06  # between samples: past fusion-runner's write interval, so each line is alone
# Between pairs: a pair spends two of fusion-runner's write tokens, which come back at one
# per write interval (50 ms); pairs closer than this would be a stream, not rare lines.
PAIR_SAMPLE_GAP = 0.15


def pickup(bench: Session) -> tuple[float, float]:
    """ms from the commit to the pid recorded, and to the simulation's first step."""
    bench.random_phase()
    run_id, committed = bench.submit({"mode": "exit_at", "at": 0})
    bench.wait(lambda: bench.column(run_id, "started_at") is not None)
    recorded = epoch(bench.column(run_id, "started_at"))
    bench.wait(lambda: bench.note(run_id, "began_at") is not None)
    began = bench.note(run_id, "began_at") or 0.0
    bench.until_final(run_id)
    return (recorded - committed) * MS, (began - committed) * MS


def cancel(bench: Session, workers: int) -> tuple[float, int]:
    """ms from the committed CANCELLED to `completed_at` (written once no process of the
    run is left), and how many of the run's processes the bench still saw alive then."""
    bench_config: dict[str, object] = {"mode": "workers", "workers": workers} if workers \
        else {"mode": "wait"}
    run_id, _ = bench.submit(bench_config)
    bench.wait(lambda: bench.note(run_id, "began_at") is not None)
    leader = psutil.Process(int(bench.column(run_id, "pid")))
    # the simulation, its workers, and fusion-runner's shim above them
    expected = 1 + workers + (1 if bench.system == FUSION_RUNNER else 0)
    bench.wait(lambda: 1 + len(leader.children(recursive=True)) >= expected)
    processes = [leader, *leader.children(recursive=True)]
    bench.random_phase()
    bench.cancel(run_id)
    committed = time.time()
    completed = bench.until_final(run_id)
    return (completed - committed) * MS, sum(1 for process in processes if alive(process))


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_to_final(bench: Session) -> float:
    # the exit comes once the run surely executes, at a random point of a tick
    at = time.time() + bench.lead + random.uniform(0, bench.period)
    run_id, _ = bench.submit({"mode": "exit_at", "at": at})
    completed = bench.until_final(run_id)
    exited = bench.note(run_id, "exited_at")
    if exited is None:  # the simulation never got to its exit: say why
        status, error = bench.sql("SELECT status, error_message FROM runs WHERE id = ?",
                                  (run_id,))[0]
        raise RuntimeError(f"run {run_id} ended {status} without its exit note: {error}")
    return (completed - exited) * MS


def progress(bench: Session, samples: int, pair: bool) -> list[float]:
    """ms from a line appended to its iteration in the column: each line alone, or the
    second of two lines 5 ms apart."""
    ids, _ = bench.live_runs(1)
    run_id, path = ids[0], bench.progress_file(ids[0])
    latencies, n = [], 0
    for _ in range(samples):
        bench.random_phase()
        if pair:
            n += 1
            append(path, n)
            time.sleep(PAIR_GAP)
        n += 1
        written = append(path, n)
        reached = bench.watch(reaches(bench, run_id, n))
        latencies.append((reached - written) * MS)
        time.sleep(PAIR_SAMPLE_GAP if pair else LINE_GAP)
    bench.end_runs(ids)
    return latencies


def reaches(bench: Session, run_id: str, n: int) -> Callable[[], bool]:
    return lambda: bool(bench.column(run_id, "current_iteration") == n)


def append(path: object, n: int) -> float:
    with open(str(path), "a") as file:
        file.write(json.dumps({"iteration": n}) + "\n")
    return time.time()


def throughput(bench: Session, runs: int) -> float:
    """Runs per second: `runs` trivial simulations committed at once, to the last final."""
    ids, committed = bench.submit_many(runs, {"mode": "exit_at", "at": 0}, "throughput")
    bench.wait(lambda: bench.count(ids, "completed_at IS NULL") == 0, timeout=600, pause=0.05)
    rows = bench.sql("SELECT MAX(completed_at) FROM runs WHERE name = 'throughput' "
                     f"AND id IN ({', '.join('?' * len(ids))})", ids)
    return runs / (epoch(rows[0][0]) - committed)


def idle_cpu(bench: Session, seconds: float) -> float:
    """The supervisor's CPU, % of one core, over `seconds` in which nothing changes."""
    before, since = bench.supervisor.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (bench.supervisor.cpu_seconds() - before) / (time.monotonic() - since) * 100


def shim_rss_mb(bench: Session, ids: list[str]) -> float:
    """The mean RSS of the processes fusion-runner puts above each simulation."""
    sizes = [psutil.Process(int(bench.column(run_id, "pid"))).memory_info().rss
             for run_id in ids]
    return sum(sizes) / len(sizes) / 2**20


@dataclass
class StreamResult:
    cpu: float  # % of one core
    lag_first: float  # ms, the worst in the first half
    lag_second: float  # ms, the worst in the second half
    lines_per_second: float  # written in all


def stream(bench: Session, runs: int, rate: float, seconds: float) -> StreamResult:
    """`runs` simulations each appending `rate` lines a second: the supervisor's CPU and
    how far the columns are behind the files (in seconds of writing)."""
    ids, _ = bench.submit_many(runs, {"mode": "stream", "rate": rate, "seconds": seconds},
                               "stream")
    bench.wait(lambda: bench.count(ids, "pid IS NOT NULL") == runs)
    files = [bench.progress_file(run_id) for run_id in ids]
    lags: list[float] = []
    before, measured_from = bench.supervisor.cpu_seconds(), time.time()
    deadline = measured_from + seconds - 0.5
    while time.time() < deadline:
        time.sleep(0.25)
        columns = dict(bench.sql("SELECT id, current_iteration FROM runs WHERE id IN "
                                 f"({', '.join('?' * len(ids))})", ids))
        behind = [lines(path) - int(columns.get(run_id) or 0)
                  for run_id, path in zip(ids, files, strict=True)]
        lags.append(max(behind) / rate * MS)
    elapsed = time.time() - measured_from
    cpu = (bench.supervisor.cpu_seconds() - before) / elapsed * 100
    bench.wait(lambda: bench.count(ids, "completed_at IS NULL") == 0, timeout=120, pause=0.05)
    written = sum(lines(path) for path in files) / seconds
    half = max(len(lags) // 2, 1)
    return StreamResult(cpu, max(lags[:half], default=0.0), max(lags[half:], default=0.0),
                        written)


def lines(path: object) -> int:
    try:
        with open(str(path), "rb") as file:
            return file.read().count(b"\n")
    except FileNotFoundError:
        return 0


# Every session on the bench's database but the bench's own: the supervisor's (its
# pool, its LISTEN connection, its worker lock).
ACTIVITY = ("SELECT pid, query_start, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'")  # not autovacuum's workers


def statements_started(bench: Session, seconds: float) -> list[str]:
    """The statements the supervisor's sessions started over `seconds`, by their text.

    A backend sets its `query_start` in pg_stat_activity each time it starts a
    statement; polling the view every millisecond and counting the changes sees
    each statement that comes alone, and at least one of several sent closer
    together than a poll (BEGIN, a SELECT and COMMIT may count once). A lower
    bound, then, but exact at 0, the goal; and it needs no extension, no log
    access, and no privilege beyond being the supervisor's database user.
    """
    last = {pid: started for pid, started, _ in bench.sql(ACTIVITY)}
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid, started, query in bench.sql(ACTIVITY):
            if started is not None and last.get(pid) != started:
                seen.append(" ".join(str(query).split()))
            last[pid] = started
        time.sleep(0.001)
    return seen
