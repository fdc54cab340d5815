"""Measure SPEC §10's latencies against a real daemon, on SQLite or PostgreSQL (SPEC §10's targets).

    .venv/bin/python bench/latency.py [--samples 100] [--database-url URL [--empty-database]]
    .venv/bin/python bench/pg.py [the same options]   # on a throwaway local PostgreSQL server

Each step is timed from the client's committed write (or the simulation's
exit) to the column the daemon commits, using the daemon's own timestamps
(`started_at`, `completed_at`) where the row has one.

Without --database-url the database is a SQLite file in a temporary folder.
With a postgresql:// or postgresql+psycopg:// URL the bench creates a
throwaway database on that server, runs there and drops it at the end; when
the URL's user may not CREATE DATABASE, --empty-database runs in the URL's own
database instead, after DROPPING its `runs` table and fusion-runner's own tables
(their rows are lost). The client side is then plain psycopg, as a GUI's.

On PostgreSQL the daemon's fallback poll is 30 s, so that a wake-up that never
comes shows as a slow sample instead of hiding under a 1 s poll, and its lease
is an hour, so that no heartbeat falls in the idle windows; and the bench adds
"queries by the idle daemon", with no run and with 10 live runs that write
nothing (how they are counted: `statements_started`).
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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

SIM = Path(__file__).with_name("sim.py")
POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg://")
POSTGRES_DAEMON_ARGS = ["--poll-interval-seconds", "30", "--lease-timeout-seconds", "3600"]
# p50 / p99 targets in ms (SPEC §10); PostgreSQL's pickup and cancel p50 are looser.
TARGETS = {"pickup": (5, 20), "cancel": (10, 50), "exit": (5, 20), "progress": (2, 20)}
POSTGRES_TARGETS = TARGETS | {"pickup": (10, 20), "cancel": (20, 50)}
IDLE_SECONDS = 10.0
# A sample this slow waited for something other than a wake-up (a fallback poll?).
SUSPECT_MS = 500.0


def utc_text() -> str:
    return datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def epoch(value: object) -> float:
    """A naive-UTC timestamp the daemon wrote (text on SQLite, a datetime from psycopg's
    `timestamp without time zone`) in seconds since the epoch, as time.time() counts."""
    if not isinstance(value, datetime):
        value = datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S.%f")
    return value.replace(tzinfo=UTC).timestamp()


class Client(Protocol):
    """The bench's connection to the runs table: each statement committed on return."""

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def now(self) -> object:
        """`created_at` as the column takes it."""

    def close(self) -> None: ...


class SqliteClient:
    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, timeout=10, isolation_level=None)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, params).fetchall()

    def now(self) -> object:
        return utc_text()

    def close(self) -> None:
        self.connection.close()


class PgClient:
    def __init__(self, url: str) -> None:
        import psycopg

        self.connection = psycopg.connect(conninfo(url), autocommit=True)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        # The bench's SQL is written with sqlite3's `?` (and has no literal `?`).
        cursor = self.connection.execute(sql.replace("?", "%s"), params or None)
        return cursor.fetchall() if cursor.description else []

    def now(self) -> object:
        return datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as the columns hold

    def close(self) -> None:
        self.connection.close()


def conninfo(url: str) -> str:
    """libpq takes the URL itself once SQLAlchemy's driver suffix is gone."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@dataclass
class Target:
    """The database the daemon is given, and how the bench connects to it."""

    url: str
    connect: Callable[[], Client]
    postgres: bool = False


@contextlib.contextmanager
def target_database(url: str | None, folder: Path, empty: bool) -> Iterator[Target]:
    if url is None:
        path = folder / "runs.db"
        yield Target(f"sqlite:///{path}", lambda: SqliteClient(path))
        return
    if not url.startswith(POSTGRES_SCHEMES):
        raise SystemExit("--database-url: a postgresql:// URL (omit it for SQLite)")
    with fresh_postgres(url, empty) as fresh:
        yield Target(fresh, lambda: PgClient(fresh), postgres=True)


@contextlib.contextmanager
def fresh_postgres(url: str, empty: bool) -> Iterator[str]:
    """The URL of an empty database on `url`'s server: a new one, dropped after use, or
    with `empty` (for a user who may not create databases) `url`'s own, emptied."""
    name = f"fusion_bench_{os.urandom(4).hex()}"
    if not admin(url, f"CREATE DATABASE {name}"):
        if not empty:
            raise SystemExit("this user may not CREATE DATABASE: pass --empty-database to run "
                             "in the URL's database, after dropping its runs table")
        drop_runner_tables(url)
        yield url
        return
    try:
        yield with_database(url, name)
    finally:
        # FORCE: a daemon left connected by a failed run must not keep the database.
        admin(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def admin(url: str, statement: str) -> bool:
    """Run one statement outside a transaction (CREATE DATABASE needs that); whether
    the user was allowed to."""
    import psycopg

    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        try:
            connection.execute(statement.encode())
        except psycopg.errors.InsufficientPrivilege:
            return False
    return True


def with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_runner_tables(url: str) -> None:
    """`runs` and fusion-runner's own tables (with the trigger on `runs`): the daemon
    creates them again, empty."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND (tablename = 'runs' OR tablename LIKE 'fusion\\_runner\\_%')").fetchall()
        for (table,) in tables:
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                sql.Identifier(table)))
        connection.execute("DROP FUNCTION IF EXISTS fusion_runner_notify_runs() CASCADE")


class Bench:
    def __init__(self, root: Path, target: Target) -> None:
        self.root = root
        self.postgres = target.postgres
        # A wake-up missed on PostgreSQL waits for the 30 s fallback poll: let it show
        # as a slow sample rather than end the bench.
        self.timeout = 60.0 if target.postgres else 10.0
        argv = [sys.executable, "-m", "fusion_runner", "daemon",
                "--database-url", target.url, "--runs-dir", str(root / "runs"),
                "--sim-command", f"{{python}} -S {SIM}", "--max-concurrent-runs", "10",
                "--worker-id", "bench", "--stop-grace-seconds", "5"]
        argv += POSTGRES_DAEMON_ARGS if target.postgres else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
        self.log = open(root / "daemon.log", "wb")  # noqa: SIM115
        self.daemon = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        try:
            self.db = target.connect()
            self.wait(self.ready, 15)
        except BaseException:
            self.stop_daemon()
            raise

    def ready(self) -> bool:
        log = (self.root / "daemon.log").read_bytes()
        if self.daemon.poll() is not None:
            raise RuntimeError("the daemon exited at start:\n"
                               + log[-3000:].decode(errors="replace"))
        return b"action=ready" in log

    def stop_daemon(self) -> None:
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(10)

    def close(self) -> None:
        self.stop_daemon()
        for (pgid,) in self.sql("SELECT pgid FROM runs WHERE pgid IS NOT NULL"):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        self.db.close()

    def wait(self, condition: Callable[[], object], timeout: float | None = None,
             pause: float = 0.01) -> None:
        """Poll slowly unless told otherwise: where the row carries the daemon's own
        timestamp, polling fast would only take CPU from what is measured."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark step timed out")
            time.sleep(pause)

    def sql(self, statement: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.db.rows(statement, params)

    def submit(self, bench: dict[str, object]) -> tuple[str, float]:
        run_id = os.urandom(6).hex()
        self.sql(
            "INSERT INTO runs (id, name, status, config_json, template, created_at) "
            "VALUES (?, 'bench', 'PENDING', ?, 'bench', ?)",
            (run_id, json.dumps({"bench": bench}), self.db.now()),
        )
        return run_id, time.time()

    def cancel_run(self, run_id: str) -> None:
        self.sql("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))

    def column(self, run_id: str, name: str) -> object:
        return self.sql(f"SELECT {name} FROM runs WHERE id = ?", (run_id,))[0][0]

    def until_final(self, run_id: str) -> None:
        self.wait(lambda: self.column(run_id, "completed_at") is not None)

    def pickup(self) -> float:
        run_id, committed = self.submit({"mode": "wait"})
        self.wait(lambda: self.column(run_id, "started_at") is not None)
        latency = epoch(self.column(run_id, "started_at")) - committed
        self.cancel_run(run_id)
        self.until_final(run_id)
        return latency

    def cancel(self) -> float:
        run_id, _ = self.submit({"mode": "workers", "workers": 4})
        self.wait(lambda: self.column(run_id, "pid") is not None)
        pid = int(str(self.column(run_id, "pid")))
        self.wait(lambda: len(psutil.Process(pid).children(recursive=True)) >= 5)
        self.cancel_run(run_id)
        committed = time.time()
        self.until_final(run_id)
        return epoch(self.column(run_id, "completed_at")) - committed

    def exit(self) -> float:
        run_id, _ = self.submit({"mode": "exit_at", "at": time.time() + 0.3})
        self.until_final(run_id)
        note = self.root / "runs" / run_id / "output" / "exited_at"
        if not note.exists():  # the simulation never got to its exit: say why, not ENOENT
            status, error = self.sql("SELECT status, error_message FROM runs WHERE id = ?",
                                     (run_id,))[0]
            raise RuntimeError(f"run {run_id} ended {status} without its exit note: {error}")
        return epoch(self.column(run_id, "completed_at")) - float(note.read_text())

    def progress(self, run_id: str, progress: Path, n: int) -> float:
        with open(progress, "a") as file:
            file.write(json.dumps({"iteration": n}) + "\n")
        written = time.time()
        # No timestamp in the row for this one: watch closely.
        self.wait(lambda: self.column(run_id, "current_iteration") == n, pause=0.0002)
        return time.time() - written

    def live_runs(self, runs: int) -> list[str]:
        """`runs` simulations that wait and write nothing, once all are spawned."""
        ids = [self.submit({"mode": "wait"})[0] for _ in range(runs)]
        self.wait(lambda: all(self.column(run_id, "pid") for run_id in ids))
        return ids

    def end_runs(self, ids: list[str]) -> None:
        for run_id in ids:
            self.cancel_run(run_id)
        for run_id in ids:
            self.until_final(run_id)


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


# Every session on the bench's database but the bench's own: the daemon's (its
# pool, its LISTEN connection, its worker lock), the database being the bench's.
ACTIVITY = ("SELECT pid, query_start, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'")  # not autovacuum's workers


def statements_started(bench: Bench, seconds: float) -> list[str]:
    """The statements the daemon's sessions started over `seconds`, by their text.

    A backend sets its `query_start` in pg_stat_activity each time it starts a
    statement; polling the view every millisecond and counting the changes sees
    each statement that comes alone, and at least one of several sent closer
    together than a poll (BEGIN, a SELECT and COMMIT may count once). A lower
    bound, then, but exact at 0, the target; and it needs no extension
    (pg_stat_statements), no log access, and no privilege beyond being the
    daemon's database user (or pg_read_all_stats). A session that connects
    meanwhile counts its statements too.
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


def idle_window(bench: Bench, seconds: float) -> tuple[float, list[str] | None]:
    """The daemon's CPU (% of one core) over `seconds` in which nothing changes, and on
    PostgreSQL the statements its sessions started meanwhile."""
    daemon = psutil.Process(bench.daemon.pid)
    before, since = sum(daemon.cpu_times()[:2]), time.monotonic()
    statements = statements_started(bench, seconds) if bench.postgres else None
    if statements is None:
        time.sleep(seconds)
    # The bench's polling runs in its own process and the server's: not counted here.
    cpu = (sum(daemon.cpu_times()[:2]) - before) / (time.monotonic() - since) * 100
    return cpu, statements


def report_idle(name: str, cpu: float, statements: list[str] | None) -> None:
    print(f"{name:<34} {cpu:.2f} % of one core (target < 0.5 %)")
    if statements is None:
        return
    verdict = "ok" if not statements else "MISSED"
    print(f"{'  queries by the idle daemon':<34} {len(statements)} in {IDLE_SECONDS:g} s "
          f"(target 0; fallback poll 30 s)  {verdict}")
    for text, count in Counter(statements).most_common(5):
        print(f"      {count:4d} x {text[:100]}")


def idle_with_live_runs(bench: Bench, runs: int = 10) -> None:
    """SPEC §10's idle case: live runs that write nothing (PostgreSQL only, for its
    query count: SQLite's output stays as it was)."""
    ids = bench.live_runs(runs)
    time.sleep(1)  # past the writes that follow each spawn
    cpu, statements = idle_window(bench, IDLE_SECONDS)
    report_idle(f"idle daemon, {runs} live runs", cpu, statements)
    bench.end_runs(ids)


def report(name: str, samples: list[float], target: tuple[float, float]) -> None:
    ms = sorted(sample * 1000 for sample in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    verdict = "ok" if p50 <= target[0] and p99 <= target[1] else "MISSED"
    print(f"{name:<34} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
          f"(target {target[0]:g} / {target[1]:g} ms, n={len(ms)})  {verdict}")
    # p99 hides the slowest sample, the one a missed wake-up would make.
    if slow := [m for m in ms if m > SUSPECT_MS]:
        print(f"{'':<34} {len(slow)} sample(s) over {SUSPECT_MS:g} ms, the slowest "
              f"{slow[-1]:.0f} ms: a wake-up missed?")


def run_steps(bench: Bench, samples: int) -> None:
    targets = POSTGRES_TARGETS if bench.postgres else TARGETS
    report("PENDING -> spawned, pid recorded", [bench.pickup() for _ in range(samples)],
           targets["pickup"])
    report("CANCELLED -> tree gone, completed_at", [bench.cancel() for _ in range(samples)],
           targets["cancel"])
    report("simulation exit -> final status", [bench.exit() for _ in range(samples)],
           targets["exit"])
    report("progress line -> column committed", progress_samples(bench, samples),
           targets["progress"])
    stream_load(bench, runs=10, rate=1000, seconds=6)
    report_idle("idle daemon", *idle_window(bench, IDLE_SECONDS))
    if bench.postgres:
        idle_with_live_runs(bench)


def progress_samples(bench: Bench, samples: int) -> list[float]:
    [run_id] = bench.live_runs(1)
    progress = bench.root / "runs" / run_id / "progress.jsonl"
    latencies = []
    for n in range(1, samples + 1):
        latencies.append(bench.progress(run_id, progress, n))
        time.sleep(0.06)  # past the coalescing interval: each line is a leading edge
    bench.end_runs([run_id])
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--database-url", help="a postgresql:// URL whose user may CREATE "
                        "DATABASE (default: a SQLite file in a temporary folder)")
    parser.add_argument("--empty-database", action="store_true",
                        help="when the user may not CREATE DATABASE: run in the URL's database "
                        "after dropping its runs table and fusion-runner's tables (data lost)")
    args = parser.parse_args()
    with (tempfile.TemporaryDirectory() as folder,
          target_database(args.database_url, Path(folder), args.empty_database) as target):
        bench = Bench(Path(folder), target)
        try:
            run_steps(bench, args.samples)
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
