"""A real PostgreSQL server for the tests marked `postgres`: one per session, one database per test.

The server is this session's own (a temporary cluster on a free port of
127.0.0.1, trust authentication), never the machine's. As root it runs as a
system user made for it, since initdb and postgres refuse root. Where no server
can run the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_until

SERVER_USER = "fusionpg"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class Unavailable(Exception):
    """No PostgreSQL server can run here."""


@dataclass
class PgServer:
    process: subprocess.Popen[bytes]
    root: Path
    port: int
    user: str
    bindir: Path
    data: Path
    uid: int
    gid: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self, statement: str) -> None:
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(statement.encode())

    def log_text(self) -> str:
        log = self.root / "postgres.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        """Fast shutdown by the postmaster's pid: clients (daemons) are disconnected."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)

    def start(self) -> None:
        """Start the stopped cluster again, on the same port; return once it accepts connections."""
        if self.process.poll() is None:
            return
        self.process = start_postmaster(self.bindir, self.root, self.data, self.uid, self.gid,
                                        self.port)
        if not started(self, self.bindir):
            raise RuntimeError(f"postgres did not come back on port {self.port}:\n"
                               f"{self.log_text()[-4000:]}")

    def restart(self, while_down: Callable[[], object] | None = None) -> None:
        """What `pg_ctl restart -m fast` does: every session is cut, the same cluster comes back.

        `while_down` runs between the stop and the start, to make things happen
        during the outage. The server is the session's: tests run serially, and
        a test that restarts it leaves it running, on the same port.
        """
        self.stop()
        try:
            if while_down is not None:
                while_down()
        finally:
            self.start()


def server_bindir() -> Path:
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        pg_config = ["pg_config", "--bindir"]
        candidates.append(subprocess.run(pg_config, capture_output=True, check=True,
                                         text=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if found := shutil.which("postgres"):
        candidates.append(str(Path(found).resolve().parent))
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).exists() for name in ("initdb", "postgres")):
            return Path(candidate)
    raise Unavailable("no PostgreSQL server binaries (initdb, postgres)")


def server_account() -> tuple[int, int, str]:
    """The uid, gid and name the server runs as: ours, or a system user when we are root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
    entry = system_user()
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def system_user() -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
               SERVER_USER]
    result = subprocess.run(useradd, capture_output=True, text=True)
    try:
        return pwd.getpwnam(SERVER_USER)  # made by us, or by a session racing us
    except KeyError:
        raise Unavailable(f"cannot create user {SERVER_USER}: {result.stderr.strip()}") from None


def as_account(uid: int, gid: int, argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    # setpriv execs in place (runuser would stay as the parent): the pid we
    # hold is the postmaster's own.
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *argv]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def initdb(bindir: Path, root: Path, uid: int, gid: int, user: str) -> Path:
    data = root / "data"
    argv = [str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions"]
    result = subprocess.run(as_account(uid, gid, argv), capture_output=True, text=True,
                            cwd=root, env=server_env(), timeout=120)
    if result.returncode != 0:
        raise Unavailable(f"initdb failed: {(result.stderr or result.stdout).strip()}")
    return data


def server_env() -> dict[str, str]:
    # The machine's PG* variables must not point our tools at another server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return env | {"LC_ALL": "C"}


def start_postmaster(bindir: Path, root: Path, data: Path, uid: int, gid: int,
                     port: int) -> subprocess.Popen[bytes]:
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200"]
    with open(root / "postgres.log", "ab") as log:
        return subprocess.Popen(as_account(uid, gid, argv), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=root, env=server_env(),
                                start_new_session=True)


def is_ready(bindir: Path, port: int) -> bool:
    tool = bindir / "pg_isready"
    argv = [str(tool if tool.exists() else "pg_isready"), "-q", "-h", "127.0.0.1",
            "-p", str(port), "-d", "postgres"]
    return subprocess.run(argv, env=server_env(), timeout=10).returncode == 0


def start_server() -> PgServer:
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        raise Unavailable("psycopg is not installed (the postgres or test extra)") from error
    bindir = server_bindir()
    uid, gid, user = server_account()
    root = Path(tempfile.mkdtemp(prefix="fusion-runner-pg-"))
    try:
        os.chown(root, uid, gid)
        data = initdb(bindir, root, uid, gid, user)
        for _attempt in range(3):
            port = free_port()
            postmaster = start_postmaster(bindir, root, data, uid, gid, port)
            server = PgServer(postmaster, root, port, user, bindir, data, uid, gid)
            if started(server, bindir):
                return server
        raise Unavailable(f"postgres exited at start:\n{server.log_text()}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def started(server: PgServer, bindir: Path) -> bool:
    """Whether it accepts connections; False when it exited (its port was taken meanwhile)."""
    try:
        wait_until(lambda: server.process.poll() is not None or is_ready(bindir, server.port),
                   START_TIMEOUT, "PostgreSQL to accept connections")
    except BaseException:
        server.stop()
        raise
    return server.process.poll() is None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = start_server()
    except Unavailable as why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run under CI: {why}")
        pytest.skip(f"PostgreSQL unavailable: {why}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; dropped after the test."""
    name = f"t_{os.urandom(6).hex()}"
    pg_server.admin(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    # FORCE: a daemon the test left connected must not keep the database alive.
    pg_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
