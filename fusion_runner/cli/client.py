"""What the client commands share: their errors, the store, ids by prefix, a row as JSON.

An id on the command line is a whole id or any unique prefix of at least
MIN_PREFIX characters. A prefix that matches no run is an unknown id and one
that matches several is ambiguous: both are failures (exit status 1) whose
message lists what matched; a shorter prefix is bad usage (exit status 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fusion_runner.core import config as config_module
from fusion_runner.core import outcome, rundir
from fusion_runner.core.errors import ConfigError, InvalidRun, UnknownRun
from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.core.store import Store

MIN_PREFIX = 4
SHOWN_MATCHES = 5


class UsageError(Exception):
    """A command was given something it cannot use (exit status 2)."""


@contextlib.contextmanager
def open_store(settings: config_module.Config) -> Iterator[Store]:
    try:
        # The commands read none of the columns later versions added to the
        # daemon's claims table: a user who may only read a database that no
        # daemon has upgraded yet still gets answers.
        store = Store.open(settings.database_url, upgrade_claims=False)
    except ImportError as error:  # postgresql:// without the postgres extra
        raise ConfigError(
            f"database_url: {error.name or error} is not installed "
            "(pip install 'fusion-runner[postgres]')"
        ) from None
    try:
        yield store
    finally:
        store.close()


def resolve(store: Store, given: str) -> str:
    """The id of the one run that `given` names, whole or as a unique prefix."""
    if store.get_run(given) is not None:
        return given
    prefix = given.lower()
    if len(prefix) < MIN_PREFIX:
        raise UsageError(
            f"id {given!r} is too short: give the whole id or at least {MIN_PREFIX} characters"
        )
    matches = store.ids_with_prefix(prefix, limit=SHOWN_MATCHES + 1)
    if not matches:
        raise UnknownRun(f"no run with id {given!r}")
    if len(matches) > 1:
        shown = ", ".join(matches[:SHOWN_MATCHES])
        more = ", ..." if len(matches) > SHOWN_MATCHES else ""
        raise UnknownRun(f"id {given!r} is ambiguous: it matches {shown}{more}")
    return matches[0]


def iso(value: datetime | None) -> str | None:
    """A naive UTC timestamp of the runs table in ISO 8601 with its offset."""
    return None if value is None else value.replace(tzinfo=UTC).isoformat()


def row_json(row: Any) -> dict[str, Any]:
    """Every SPEC §1 column under its own name; timestamps in ISO 8601."""
    values = {column: getattr(row, column) for column in RUNS_COLUMNS}
    return {
        column: iso(value) if isinstance(value, datetime) else value
        for column, value in values.items()
    }


def run_dir(store: Store, settings: config_module.Config, run_id: str) -> Path | None:
    """Where the run's files are: as the daemon recorded it, else runs_dir/id."""
    recorded = store.recorded_run_dir(run_id)
    if recorded is not None:
        return Path(recorded)
    try:
        return rundir.RunPaths.under(settings.runs_dir, run_id).run_dir
    except InvalidRun:  # an id the daemon refuses never gets a directory
        return None


def log_file(folder: Path) -> Path:
    return folder / "logs" / "sim.log"


def exit_record(folder: Path) -> outcome.ExitRecord | None:
    try:
        return outcome.ExitRecord.from_json((folder / "exit.json").read_text())
    except (OSError, UnicodeDecodeError):
        return None
