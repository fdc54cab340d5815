"""fusion-runner's benchmark, side by side with a supervisor built the way FUSION's GUI
run manager is today (bench/baseline.py), on SQLite or PostgreSQL.

    python -m bench [--samples 100] [--quick] [--database-url URL | --postgres] [--out DIR]

Every figure is measured for fusion-runner and for the baseline, each driven through
the same `runs` table with the same simulation (bench/sim.py), and printed with their
ratio (how many times better fusion-runner is) and fusion-runner's goal (issue 18,
SPEC §10). Without --database-url the database is a SQLite file in a temporary
folder; a postgresql:// URL gets a throwaway database made on that server and
dropped at the end; --postgres starts a throwaway server from this machine's
PostgreSQL binaries. With --out DIR it also writes results-<database>.json (every
figure, every sample), latencies-<database>.png and, with --profile, a cProfile of
the daemon under the progress stream. It installs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pstats
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import measure, report
from bench.database import Target, target_database, throwaway_server
from bench.figures import Results
from bench.session import Session, session
from bench.supervisors import BASELINE, FUSION_RUNNER, SYSTEMS

LATENCY_SLOTS = 10


@dataclass
class Sizes:
    samples: int = 100
    baseline_samples: int = 100
    progress_samples: int = 1000  # fusion-runner's: its max over 1,000 lines has a goal
    idle_seconds: float = 10.0
    live_idle: int = 10  # live runs of the idle and memory figures
    settle_seconds: float = 1.0  # before an idle window: past the writes of the last step
    stream_runs: int = 10
    stream_rate: float = 1000.0
    stream_seconds: float = 6.0
    queue: int = 10_000
    live: int = 100
    throughput_runs: int = 100
    baseline_single_slot_runs: int = 10  # the baseline does ~1 run/s on one slot

    @classmethod
    def quick(cls) -> Sizes:
        # The baseline's cancel takes ~3 s whatever the sizes: one sample of it.
        return cls(samples=2, baseline_samples=1, progress_samples=2, idle_seconds=0.5,
                   live_idle=2, settle_seconds=0.2, stream_runs=2, stream_rate=100,
                   stream_seconds=1.5, queue=100, live=3, throughput_runs=3,
                   baseline_single_slot_runs=1)


def latencies(bench: Session, samples: int, lines: int, results: Results) -> None:
    system = bench.system
    picked = [measure.pickup(bench) for _ in range(samples)]
    results.latency("pickup_pid", system, [pid for pid, _ in picked])
    results.latency("pickup_exec", system, [executing for _, executing in picked])
    for key, workers in (("cancel_cooperative", 0), ("cancel_pool", measure.POOL_WORKERS)):
        cancelled = [measure.cancel(bench, workers) for _ in range(samples)]
        left = sum(alive for _, alive in cancelled)
        results.latency(key, system, [ms for ms, _ in cancelled],
                        f"{left} process(es) left alive" if left else "")
    results.latency("progress_alone", system, measure.progress(bench, lines, pair=False))
    results.latency("progress_pair", system, measure.progress(bench, lines, pair=True))
    results.latency("exit", system, [measure.exit_to_final(bench) for _ in range(samples)])


def costs(bench: Session, sizes: Sizes, results: Results) -> None:
    """CPU and memory: idle, with 10 live runs writing nothing, under a progress stream."""
    system = bench.system
    time.sleep(sizes.settle_seconds)
    results.scalar("cpu_idle", system, measure.idle_cpu(bench, sizes.idle_seconds))
    results.scalar("rss_idle", system, bench.supervisor.rss_mb())
    ids, _ = bench.live_runs(sizes.live_idle)
    runs = "" if sizes.live_idle == 10 else f"{sizes.live_idle} runs"
    time.sleep(sizes.settle_seconds)
    if bench.postgres:
        queries = measure.statements_started(bench, sizes.idle_seconds)
        results.scalar("queries_live10", system, len(queries),
                       f"in {sizes.idle_seconds:g} s" + (f"; {queries[0][:60]}" if queries
                                                          else ""))
    results.scalar("cpu_live10", system, measure.idle_cpu(bench, sizes.idle_seconds), runs)
    results.scalar("rss_live10", system, bench.supervisor.rss_mb(), runs)
    if system == FUSION_RUNNER:
        results.scalar("shim_rss", system, measure.shim_rss_mb(bench, ids))
    bench.end_runs(ids)
    stream_load(bench, sizes, results)


def stream_load(bench: Session, sizes: Sizes, results: Results) -> None:
    load = measure.stream(bench, sizes.stream_runs, sizes.stream_rate, sizes.stream_seconds)
    note = f"{sizes.stream_runs} x {sizes.stream_rate:g} lines/s"
    results.scalar("cpu_stream", bench.system, load.cpu, note)
    results.scalar("lag_first", bench.system, load.lag_first)
    grows = load.lag_second > 1.5 * load.lag_first + 100  # ms: beyond a steady sawtooth
    results.scalar("lag_second", bench.system, load.lag_second, "GROWS" if grows else "")


def scale(bench: Session, sizes: Sizes, results: Results) -> None:
    """fusion-runner only: the claim and the idle loop with a deep queue, many live runs."""
    samples = max(sizes.samples // 2, 1)
    held, _ = bench.submit_many(10, {"mode": "wait"}, "held", held=True)
    for queued in (10, sizes.queue):
        if queued > len(held):
            held += bench.submit_many(queued - len(held), {"mode": "wait"}, "held",
                                      held=True)[0]
        time.sleep(sizes.settle_seconds)
        key = "10" if queued == 10 else "10000"
        note = "" if queued in (10, 10_000) else f"{queued} rows"
        results.scalar(f"cpu_queue_{key}", FUSION_RUNNER,
                       measure.idle_cpu(bench, sizes.idle_seconds), note)
        results.latency(f"claim_{key}", FUSION_RUNNER,
                        [measure.pickup(bench)[0] for _ in range(samples)], note)
    bench.sql("DELETE FROM fusion_runner_meta WHERE run_id IN "
              "(SELECT id FROM runs WHERE name = 'held' AND status = 'PENDING')")
    bench.sql("DELETE FROM runs WHERE name = 'held' AND status = 'PENDING'")
    ids, started = bench.live_runs(sizes.live)
    note = "" if sizes.live == 100 else f"{sizes.live} runs"
    results.scalar("start_live100", FUSION_RUNNER, started * 1000, note)
    time.sleep(sizes.settle_seconds)
    results.scalar("cpu_live100", FUSION_RUNNER, measure.idle_cpu(bench, sizes.idle_seconds),
                   note)
    results.scalar("rss_live100", FUSION_RUNNER, bench.supervisor.rss_mb(), note)
    bench.end_runs(ids)


def measure_system(system: str, target: Target, root: Path, sizes: Sizes,
                   results: Results) -> None:
    samples = sizes.samples if system == FUSION_RUNNER else sizes.baseline_samples
    lines = sizes.progress_samples if system == FUSION_RUNNER else samples
    progress(f"{system}: latencies ({samples} samples each, {lines} progress lines), "
             "CPU and memory")
    with session(system, target, root, LATENCY_SLOTS) as bench:
        latencies(bench, samples, lines, results)
        costs(bench, sizes, results)
    progress(f"{system}: start throughput")
    for slots in (1, 50):
        runs = sizes.throughput_runs
        if system == BASELINE and slots == 1:
            runs = min(runs, sizes.baseline_single_slot_runs)
        with session(system, target, root, slots) as bench:
            results.scalar(f"throughput_{slots}", system, measure.throughput(bench, runs),
                           f"{runs} runs")
    if system == FUSION_RUNNER:
        progress(f"{system}: scale ({sizes.queue} queued rows, {sizes.live} live runs)")
        with session(system, target, root, sizes.live + LATENCY_SLOTS) as bench:
            scale(bench, sizes, results)


def profile_daemon(target: Target, root: Path, sizes: Sizes, out: Path) -> list[str]:
    """cProfile of the daemon under the progress stream, and idle with live runs that
    write nothing; where their summaries are."""
    progress("fusion-runner under cProfile: the progress stream, then idle with live runs")
    summaries = []
    for case in ("stream", "idle"):
        path = root / f"profile-{target.kind}-{case}.pstats"
        with session(FUSION_RUNNER, target, root, LATENCY_SLOTS, profile=path) as bench:
            if case == "stream":
                measure.stream(bench, sizes.stream_runs, sizes.stream_rate,
                               sizes.stream_seconds)
            else:
                ids, _ = bench.live_runs(sizes.live_idle)
                time.sleep(sizes.settle_seconds)
                cpu = measure.idle_cpu(bench, sizes.idle_seconds)
                bench.end_runs(ids)
        text = io.StringIO()
        if case == "idle":
            text.write(f"{sizes.live_idle} live runs writing nothing, {sizes.idle_seconds:g} s: "
                       f"{cpu:.2f} % of one core under cProfile\n")
        stats = pstats.Stats(str(path), stream=text)
        stats.strip_dirs().sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        summary = out / f"profile-{target.kind}-{case}.txt"
        summary.write_text(text.getvalue())
        summaries.append(str(summary))
    return summaries


def progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def database(args: argparse.Namespace, folder: Path) -> Iterator[Target]:
    if args.postgres:
        with throwaway_server() as url, target_database(url, folder, False) as target:
            yield target
        return
    with target_database(args.database_url, folder, args.empty_database) as target:
        yield target


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, help="samples per latency, for both "
                        "(default 100; fusion-runner's progress lines 1000)")
    parser.add_argument("--progress-samples", type=int,
                        help="fusion-runner's progress lines, alone and in pairs (1000)")
    parser.add_argument("--baseline-samples", type=int,
                        help="the baseline's samples per latency (default: --samples; "
                        "each of its cancels takes ~3 s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the bench runs, measures nothing")
    parser.add_argument("--idle-seconds", type=float, help="each idle CPU window (10)")
    parser.add_argument("--queue", type=int, help="held PENDING rows of the scale step "
                        "(10000)")
    parser.add_argument("--live", type=int, help="live runs of the scale step (100)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="which to measure (default: fusion-runner,baseline)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="a postgresql:// URL whose user may CREATE "
                       "DATABASE (default: a SQLite file in a temporary folder)")
    where.add_argument("--postgres", action="store_true",
                       help="on a throwaway PostgreSQL server started from this machine's "
                       "binaries (tests/pgserver.py)")
    parser.add_argument("--empty-database", action="store_true",
                        help="when the user may not CREATE DATABASE: run in the URL's database "
                        "after dropping its runs table and fusion-runner's tables (data lost)")
    parser.add_argument("--out", type=Path, help="write results-<db>.json and "
                        "latencies-<db>.png here (the plots need matplotlib: the bench extra)")
    parser.add_argument("--profile", action="store_true",
                        help="with --out: also profile the daemon (cProfile) under the stream "
                        "and idle with live runs")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.samples is not None:
        sizes.samples = sizes.baseline_samples = sizes.progress_samples = args.samples
    for name in ("baseline_samples", "progress_samples", "idle_seconds", "queue", "live"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = sizes_from(args)
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    if unknown := set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: unknown {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(SYSTEMS)})")
    if args.profile and args.out is None:
        raise SystemExit("--profile needs --out DIR (where the profile is written)")
    if args.out:
        report.require_matplotlib()  # before the measuring, not after it
        args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as folder, \
            database(args, Path(folder)) as target:
        results = Results(postgres=target.postgres)
        for system in systems:
            measure_system(system, target, Path(folder), sizes, results)
        profiled = profile_daemon(target, Path(folder), sizes, args.out) \
            if args.profile and args.out else []
    info: dict[str, object] = {"date": f"{started:%Y-%m-%d %H:%M} UTC", "database": target.kind,
            "machine": report.machine(),
            "command": "python -m bench " + shlex.join(argv if argv is not None
                                                         else sys.argv[1:]),
            "sizes": sizes.__dict__}
    machine = info["machine"]
    assert isinstance(machine, dict)
    header = [f"fusion-runner benchmark on {target.kind}, {info['date']}",
              f"machine: {machine['cpus']} CPUs, {machine['cpu_model']}; "
              f"Python {machine['python']}",
              f"command: {info['command']}"]
    print(report.text_table(results, header), flush=True)
    if args.out:
        report.write_json(results, info, args.out / f"results-{target.kind}.json")
        report.plot_latencies(results, header[0], args.out / f"latencies-{target.kind}.png")
        (args.out / f"table-{target.kind}.md").write_text(report.markdown_table(results) + "\n")
        for summary in profiled:
            print(f"profile: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
