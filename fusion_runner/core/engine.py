"""Making the database engine, and tuning SQLite: WAL and a busy timeout."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import StaticPool

from fusion_runner.core import config as config_module
from fusion_runner.core.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Tries at switching a new database to WAL while another process does the same.
WAL_ATTEMPTS = 20


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    _enable_wal(cursor)
    # Safe with WAL: a power cut may lose the last commits, never corrupt.
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _enable_wal(cursor: Any) -> None:
    """journal_mode = WAL, again when two processes open a database not yet in WAL
    mode at once: switching needs the database to itself, and SQLite then answers
    "database is locked" at once instead of waiting out the busy timeout."""
    for attempt in range(1, WAL_ATTEMPTS + 1):
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == WAL_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)


def make_engine(database_url: str) -> Engine:
    """An engine for a `database_url` of SPEC §8; SQLite gets WAL and a busy timeout."""
    sqlite_file = config_module.sqlite_path(database_url)
    if sqlite_file is not None:
        try:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            folder = sqlite_file.parent
            raise ConfigError(f"database_url: cannot create {folder}: {error}") from None
        # One connection for the whole process: then SQLite's data_version
        # changes only when another process commits (see `changed_by_others`).
        engine = create_engine(f"sqlite:///{sqlite_file}", poolclass=StaticPool)
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(config_module.sqlalchemy_url(database_url), pool_pre_ping=True)
