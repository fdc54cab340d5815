"""Shared test helpers: a real daemon process, a real database, bounded waits.

The database is a SQLite file in the test's tmp_path, unless the test uses the
`backend` fixture (directly or through `pytest.mark.usefixtures("backend")`):
then it runs once on SQLite and once on a fresh PostgreSQL database
(tests/pgserver.py), with the same `daemon`, `client` and `daemon_factory`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

pytest_plugins = ["tests.pgserver", "tests.slurmcluster", "tests.systemd_sandbox"]

SIM = Path(__file__).parent / "sims" / "sim.py"
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.1)


def utc_text(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def new_id() -> str:
    return os.urandom(6).hex()


class Client:
    """Talks to the runs table as the FUSION GUI does: plain SQL, nothing else.

    This one speaks SQLite to the file; tests/clients.py's PgClient has the
    same methods for PostgreSQL.
    """

    def __init__(self, database: Path) -> None:
        self.database = database

    @property
    def url(self) -> str:
        return f"sqlite:///{self.database}"

    def connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.database, timeout=10, isolation_level=None)
        connection.row_factory = sqlite3.Row
        return connection

    def submit(self, config: dict[str, Any] | str | None = None, *, run_id: str | None = None,
               created_at: datetime | None = None, name: str = "test") -> str:
        run_id = run_id or new_id()
        config_json = config if isinstance(config, str) else json.dumps(config or {"sim": {}})
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO runs (id, name, status, config_json, template, created_at) "
                "VALUES (?, ?, 'PENDING', ?, 'minimal.ini', ?)",
                (run_id, name, config_json, utc_text(created_at)),
            )
        return run_id

    def row(self, run_id: str) -> sqlite3.Row | None:
        with self.connect() as connection:
            return connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()

    def status(self, run_id: str) -> str | None:
        row = self.row(run_id)
        return None if row is None else row["status"]

    def cancel(self, run_id: str) -> None:
        with self.connect() as connection:
            connection.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))

    def delete(self, run_id: str) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def count(self, status: str) -> int:
        with self.connect() as connection:
            query = "SELECT COUNT(*) FROM runs WHERE status = ?"
            return int(connection.execute(query, (status,)).fetchone()[0])

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Any statement, `?` placeholders; datetimes are written as the GUI writes them."""
        values = tuple(utc_text(v) if isinstance(v, datetime) else v for v in params)
        with self.connect() as connection:
            connection.execute(statement, values)

    def pgids(self) -> list[int]:
        if not self.database.exists():
            return []
        with self.connect() as connection:
            rows = connection.execute("SELECT pgid FROM runs WHERE pgid IS NOT NULL").fetchall()
        return [int(pgid) for (pgid,) in rows]

    def wait_status(self, run_id: str, *statuses: str, timeout: float = 15.0) -> sqlite3.Row:
        def reached() -> sqlite3.Row | None:
            row = self.row(run_id)
            return row if row is not None and row["status"] in statuses else None

        return wait_until(reached, timeout, f"run {run_id} to reach {statuses}")

    def wait_final(self, run_id: str, timeout: float = 15.0) -> sqlite3.Row:
        """Final status with completed_at written."""
        def done() -> sqlite3.Row | None:
            row = self.row(run_id)
            final = row is not None and row["status"] in ("COMPLETED", "FAILED", "CANCELLED")
            return row if final and row["completed_at"] is not None else None

        return wait_until(done, timeout, f"run {run_id} to end")


def pids_of_run(run_dir: Path) -> list[int]:
    try:
        return [int(line) for line in (run_dir / "pids").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Daemon:
    """A `fusion-runner daemon` child process with its own database and runs dir."""

    root: Path
    settings: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    ready_count: int = 0
    log_name: str | None = None  # two daemons of one worker_id need two logs

    @property
    def database(self) -> Path:
        """The SQLite file (meaningless when `url` is a PostgreSQL one)."""
        return self.root / "runs.db"

    @property
    def url(self) -> str:
        return self.settings.get("database-url") or f"sqlite:///{self.database}"

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def client(self) -> Client:
        """A client of this daemon's database, SQLite or PostgreSQL."""
        if not self.is_postgres:
            return Client(self.database)
        from tests.clients import PgClient

        return PgClient(self.url)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def log(self) -> Path:
        name = self.log_name or f"daemon-{self.settings.get('worker-id', 'test')}.log"
        return self.root / name

    def argv(self) -> list[str]:
        options = {
            "database-url": self.url,
            "runs-dir": str(self.runs_dir),
            "sim-command": f"{{python}} {SIM}",
            "stop-grace-seconds": "2",
            "poll-interval-seconds": "0.5",
            "worker-id": "test",
            "log-level": "DEBUG",
            # Tests of many runs at once on a machine of few CPUs: the test sims take 1
            # core each; tests of admission by cores set their own.
            "max-cores": "256",
        } | self.settings
        argv = [sys.executable, "-m", "fusion_runner", "daemon"]
        for key, value in options.items():
            argv += [f"--{key}", value]
        return argv

    def start(self, extra_env: dict[str, str] | None = None, wait_ready: bool = True) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
        env |= extra_env or {}
        self.ready_count = self.log_text().count("action=ready")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        if wait_ready:
            wait_until(
                lambda: self.log_text().count("action=ready") > self.ready_count,
                10, "the daemon to be ready",
            )
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def cleanup(self) -> None:
        """Stop the daemon and every process any of its runs started, by pid."""
        self.stop()
        if self.runs_dir.exists():
            for run_dir in self.runs_dir.iterdir():
                for pid in pids_of_run(run_dir):
                    kill_quietly(pid)
        pgids: list[int] = []
        with contextlib.suppress(Exception):  # no table, or a server that is down
            pgids = self.client().pgids()
        for pgid in pgids:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """The database of the test's daemons: a SQLite file, then a fresh PostgreSQL database.

    A test (or module, with `pytest.mark.usefixtures("backend")`) that uses it
    runs on both; `daemon_factory` reads it. One about SQLite itself narrows
    it with `SQLITE_ONLY`.
    """
    return str(request.param)


# Narrows a test of a module that uses `backend` to SQLite (the file, WAL, flock).
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def daemon_factory(request: pytest.FixtureRequest,
                   tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """make(root=None, **settings): a Daemon, not started; `root` for a host of its own."""
    made: list[Daemon] = []
    url: str | None = None
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "postgres":
        url = str(request.getfixturevalue("pg_url"))  # dropped after this fixture's teardown

    def make(root: Path | None = None, **settings: str) -> Daemon:
        options = {key.replace("_", "-"): value for key, value in settings.items()}
        if url is not None:
            options.setdefault("database-url", url)
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(root or tmp_path, options)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory().start()


@pytest.fixture
def client(daemon: Daemon) -> Client:
    return daemon.client()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-seed", type=int, default=None,
                     help="seed of tests/integration/test_chaos.py (default: "
                          "$FUSION_RUNNER_CHAOS_SEED, else a random one, printed)")
