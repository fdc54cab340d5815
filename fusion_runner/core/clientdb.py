"""What a client (the API, a GUI) needs of the database beyond `Store`'s verbs.

A client never creates the database (SPEC §8: only the daemon does): it opens
one that exists and has a `runs` table, or fails saying so. Its SQLite engine
has a connection pool, not the daemon's one shared connection, so that a GUI's
threads may use one client at once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.request import pathname2url

from sqlalchemy import Engine, create_engine, delete, inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

from fusion_runner.core import config as config_module
from fusion_runner.core import rundir
from fusion_runner.core.engine import SQLITE_BUSY_TIMEOUT_MS, make_engine
from fusion_runner.core.errors import ConfigError, InvalidRun, NoDatabase, SchemaError
from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.core.schema import runs
from fusion_runner.core.status import FINAL_STATUSES
from fusion_runner.core.store import Store


def open_existing(database_url: str) -> Store:
    """A Store on a database the daemon made; ConfigError or SchemaError if there is none."""
    engine = _engine(database_url)
    try:
        _check_runs_table(engine)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


def delete_ended(store: Store, run_id: str) -> bool:
    """Delete the run's row if it has ended (COMPLETED, FAILED, CANCELLED); whether it did.

    One conditional statement: a run that starts or is cancelled meanwhile is
    never deleted by mistake.
    """
    ended = sorted(status.value for status in FINAL_STATUSES)
    statement = delete(runs).where((runs.c.id == run_id) & runs.c.status.in_(ended))
    with store.engine.begin() as conn:
        return bool(conn.execute(statement).rowcount == 1)


def run_paths(store: Store, runs_dir: Path | None, run_id: str) -> rundir.RunPaths | None:
    """Where the run's files are: as the daemon recorded it, else runs_dir/id, else None.

    None also for an id the daemon refuses: such a run never gets a folder.
    """
    try:
        recorded = store.recorded_run_dir(run_id)
    except SQLAlchemyError:  # a database no daemon has served yet has no claims table
        recorded = None
    return paths_for(run_id, recorded, runs_dir)


def paths_for(run_id: str, recorded: str | None, runs_dir: Path | None) -> rundir.RunPaths | None:
    """`run_paths` for a run whose recorded folder (or None) the caller has read already."""
    if recorded is not None:
        return rundir.RunPaths.at(Path(recorded), run_id)
    if runs_dir is None:
        return None
    try:
        return rundir.RunPaths.under(runs_dir, run_id)
    except InvalidRun:
        return None


def _engine(database_url: str) -> Engine:
    path = config_module.sqlite_path(database_url)
    if path is None:
        if not database_url.startswith("postgresql"):
            raise ConfigError(f"database_url: {database_url!r} is not sqlite:/// or postgresql://")
        return make_engine(database_url)  # a server never creates a database on connect
    if not path.is_file():
        raise NoDatabase(
            f"database_url: {path} does not exist; the fusion-runner daemon creates it "
            "(start `fusion-runner daemon` once with this database_url)"
        )
    return _sqlite_engine(path)


def _sqlite_engine(path: Path) -> Engine:
    # mode=rw: SQLite opens the file or fails, and never creates one, even if
    # the file is removed after the check above.
    uri = f"file:{pathname2url(str(path.resolve()))}?mode=rw"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )

    return create_engine("sqlite://", creator=connect, poolclass=QueuePool)


def _check_runs_table(engine: Engine) -> None:
    try:
        inspector = inspect(engine)
        if not inspector.has_table(runs.name):
            raise SchemaError(
                "the database has no runs table; the fusion-runner daemon creates it "
                "(start `fusion-runner daemon` once with this database_url)"
            )
        present = {column["name"] for column in inspector.get_columns(runs.name)}
    except SQLAlchemyError as error:
        raise ConfigError(f"database_url: cannot open the database: {error}") from None
    missing = [name for name in RUNS_COLUMNS if name not in present]
    if missing:
        raise SchemaError(f"the runs table lacks column {missing[0]!r}")
