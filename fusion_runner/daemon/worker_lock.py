"""One live daemon per (database, worker_id) (SPEC §7).

A daemon holds its lock for its whole life, from before it reconciles anything
to its exit. Both kinds are released by the kernel or the server when the
daemon dies, however it dies, so a crashed daemon never blocks the next one.

- SQLite: ``flock`` on a file beside the database, which then names its holder.
- PostgreSQL: a session advisory lock on a connection kept open for the
  daemon's life; the holder is named by that connection's application_name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from fusion_runner.core import config as config_module
from fusion_runner.core.errors import AlreadyRunning

# Changing it changes every key: daemons of two versions would not see each other.
ADVISORY_NAMESPACE = b"fusion-runner/worker_id/"
APPLICATION_PREFIX = "fusion-runner"
_HOLDER = re.compile(r"pid=(?P<pid>\d+) host=(?P<host>\S+)(?: since=(?P<since>\S+))?")
# A holder writes its name right after it locks: a reader may come in between.
HOLDER_READ_ATTEMPTS = 20
HOLDER_READ_PAUSE = 0.01
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class WorkerLock(ABC):
    """The exclusive right to serve one worker_id on one database; `close` gives it up."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> WorkerLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def acquire(database_url: str, worker_id: str) -> WorkerLock:
    """Lock `worker_id` on the database of `database_url`, or raise AlreadyRunning."""
    database = config_module.sqlite_path(database_url)
    if database is not None:
        return FileLock.acquire(lock_file_path(database, worker_id), worker_id)
    return AdvisoryLock.acquire(database_url, worker_id)


def already_running(worker_id: str, holder: str | None) -> AlreadyRunning:
    who = f" ({holder})" if holder else ""
    return AlreadyRunning(
        f"another fusion-runner daemon{who} already serves worker_id {worker_id!r} "
        "on this database"
    )


def holder_text(fields: dict[str, str | None] | None) -> str | None:
    if not fields or not fields.get("pid"):
        return None
    since = f", since {fields['since']}" if fields.get("since") else ""
    return f"pid {fields['pid']} on host {fields['host']}{since}"


def parse_holder(line: str) -> dict[str, str | None] | None:
    match = _HOLDER.search(line)
    return match.groupdict() if match else None


def own_holder_line() -> str:
    since = datetime.now(UTC).strftime(TIME_FORMAT)
    return f"pid={os.getpid()} host={socket.gethostname()} since={since}"


# --- SQLite: a file lock --------------------------------------------------------


def safe_name(worker_id: str) -> str:
    """A file-name part for any worker_id; the hash keeps ids that read alike apart."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)[:40]
    digest = hashlib.sha256(worker_id.encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


def lock_file_path(database: Path, worker_id: str) -> Path:
    # Resolved, so that every path naming the database finds the same lock.
    real = database.resolve()
    return real.with_name(f"{real.name}.worker-{safe_name(worker_id)}.lock")


class FileLock(WorkerLock):
    def __init__(self, fd: int, path: Path) -> None:
        self.fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, path: Path, worker_id: str) -> FileLock:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise already_running(worker_id, holder) from None
        except BaseException:
            os.close(fd)
            raise
        _write_holder(fd)
        return cls(fd, path)

    def close(self) -> None:
        # The file stays: removing it would let a newcomer lock a new inode
        # while a late opener still holds the old one.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_lock_file(path: Path) -> int:
    # O_CLOEXEC: a simulation inheriting the fd would hold the lock after we die.
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        # Another user's file (a shared group): flock works on a read-only fd.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _write_holder(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (own_holder_line() + "\n").encode(), 0)
    except OSError:
        pass  # read-only: we hold the lock all the same, only unnamed


def _read_holder(fd: int) -> str | None:
    for _ in range(HOLDER_READ_ATTEMPTS):
        holder = holder_text(parse_holder(os.pread(fd, 4096, 0).decode(errors="replace")))
        if holder:
            return holder
        time.sleep(HOLDER_READ_PAUSE)
    return None


# --- PostgreSQL: an advisory lock ----------------------------------------------------


def advisory_key(worker_id: str) -> int:
    """A stable signed 64-bit key: the same worker_id gives the same key everywhere."""
    digest = hashlib.sha256(ADVISORY_NAMESPACE + worker_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def application_name(worker_id: str) -> str:
    # pid and host first: PostgreSQL cuts the name at 63 bytes. The start
    # time is the session's own backend_start.
    return f"{APPLICATION_PREFIX} pid={os.getpid()} host={socket.gethostname()} worker={worker_id}"


_HOLDER_QUERY = text(
    "SELECT a.application_name, a.backend_start "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "JOIN pg_database d ON d.oid = l.database "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND d.datname = current_database() "
    "AND l.classid::bigint = :high AND l.objid::bigint = :low"
)


class AdvisoryLock(WorkerLock):
    def __init__(self, connection: Connection) -> None:
        self.connection: Connection | None = connection

    @classmethod
    def acquire(cls, database_url: str, worker_id: str) -> AdvisoryLock:
        engine = create_engine(
            config_module.sqlalchemy_url(database_url),
            poolclass=NullPool,
            connect_args={"application_name": application_name(worker_id)},
        )
        # Autocommit: a session lock needs no transaction, and one held open
        # for days would block VACUUM or meet idle_in_transaction_session_timeout.
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            key = advisory_key(worker_id)
            locked = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            if not locked.scalar_one():
                raise already_running(worker_id, _advisory_holder(connection, key))
        except BaseException:
            connection.close()
            engine.dispose()
            raise
        return cls(connection)

    def close(self) -> None:
        # Closing the session frees its advisory locks.
        if self.connection is not None:
            self.connection.close()
            self.connection.engine.dispose()
            self.connection = None


def _advisory_holder(connection: Connection, key: int) -> str | None:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    parameters = {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}
    try:
        rows = connection.execute(_HOLDER_QUERY, parameters).all()
    except SQLAlchemyError:
        return None  # the refusal matters more than naming whom
    for name, started in rows:
        fields = parse_holder(name or "")
        if fields and started is not None:
            fields["since"] = started.astimezone(UTC).strftime(TIME_FORMAT)
        if holder := holder_text(fields):
            return holder
    return None
