"""The statements the daemon runs most often, straight on SQLite's DBAPI connection.

Through SQLAlchemy Core they cost several times as much; `Store` calls these
on SQLite only, and does the same through Core elsewhere.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from sqlalchemy import Engine

from fusion_runner.core.errors import DatabaseError
from fusion_runner.core.progress import PROGRESS_COLUMNS
from fusion_runner.core.status import RunStatus


def data_version(engine: Engine) -> int:
    """PRAGMA data_version: it changes when another connection commits, never for ours."""
    # The DBAPI connection itself: this runs on every pass of the loop.
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("PRAGMA data_version")
        row = cursor.fetchone()
        version = int(row[0]) if row else 0
        cursor.close()
    except sqlite3.Error as error:
        raise DatabaseError(f"PRAGMA data_version: {error}") from error
    finally:
        connection.close()
    return version


def write_progress(
    engine: Engine, run_id: str, columns: Mapping[str, float | int | None], offset: int,
    log_offset: int | None,
) -> bool:
    """`Store.write_progress` on SQLite: whether the run was still RUNNING."""
    # The daemon's most frequent write (ten runs: 200 a second), straight on
    # the DBAPI connection: ~15 us here against ~120 us through Core.
    names = sorted(columns)
    if not set(names) <= set(PROGRESS_COLUMNS):
        raise ValueError(f"not progress columns: {names}")
    assignments = ", ".join(f"{name} = ?" for name in names)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(
            f"UPDATE runs SET {assignments} WHERE id = ? AND status = ?",
            [*(columns[name] for name in names), run_id, RunStatus.RUNNING.value],
        )
        won = bool(cursor.rowcount == 1)
        cursor.execute(
            "UPDATE fusion_runner_claims SET progress_offset = ?, log_offset = ? "
            "WHERE run_id = ?",
            (offset, log_offset, run_id),
        )
        connection.commit()
    except BaseException as error:
        connection.rollback()
        if isinstance(error, sqlite3.Error):
            raise DatabaseError(f"progress of run {run_id}: {error}") from error
        raise
    finally:
        connection.close()
    return won
