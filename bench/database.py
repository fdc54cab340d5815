"""The database a benchmark runs on, and the bench's own connection to its `runs` table.

SQLite by default (a file in the bench's folder); a postgresql:// URL gets a
throwaway database created on that server and dropped at the end, or, for a
user who may not CREATE DATABASE, the URL's own database emptied of
fusion-runner's tables. `throwaway_server` starts a PostgreSQL server of the
bench's own from this machine's binaries (the tests' tests/pgserver.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg://")


def utc_text() -> str:
    return datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def epoch(value: object) -> float:
    """A naive-UTC timestamp a supervisor wrote (text on SQLite, a datetime from psycopg's
    `timestamp without time zone`) in seconds since the epoch, as time.time() counts."""
    if not isinstance(value, datetime):
        text = str(value)
        value = datetime.strptime(text if "." in text else text + ".0", "%Y-%m-%d %H:%M:%S.%f")
    return value.replace(tzinfo=UTC).timestamp()


class Client(Protocol):
    """The bench's connection to the runs table: each statement committed on return."""

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def many(self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        """Each statement run for each of its parameter rows, all in one transaction."""

    def now(self) -> object:
        """`created_at` as the column takes it."""

    def close(self) -> None: ...


class SqliteClient:
    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, timeout=10, isolation_level=None)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, params).fetchall()

    def many(self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                self.connection.executemany(sql, rows)
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

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

    def many(self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]) -> None:
        with self.connection.transaction(), self.connection.cursor() as cursor:
            for sql, rows in statements:
                cursor.executemany(sql.replace("?", "%s"), rows)

    def now(self) -> object:
        return datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as the columns hold

    def close(self) -> None:
        self.connection.close()


def conninfo(url: str) -> str:
    """libpq takes the URL itself once SQLAlchemy's driver suffix is gone."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@dataclass
class Target:
    """The database the supervisors are given, and how the bench connects to it."""

    url: str
    connect: Callable[[], Client]
    postgres: bool = False

    @property
    def kind(self) -> str:
        return "postgresql" if self.postgres else "sqlite"


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
        # FORCE: a supervisor left connected by a failed run must not keep the database.
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


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server started for the bench (the tests' own:
    initdb in a temporary folder, 127.0.0.1 on a free port, trust authentication,
    fsync off; as the system user `fusionpg` when run as root), stopped and removed
    at the end. Nothing is installed."""
    # tests.pgserver is importable from the repository's root only.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.pgserver import Unavailable, start_server

    try:
        server = start_server()
    except Unavailable as why:
        raise SystemExit(f"no PostgreSQL server can run here: {why}") from why
    try:
        yield server.url("postgres")
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
