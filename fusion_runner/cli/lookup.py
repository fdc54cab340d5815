"""Finding what a command names: the store it opens, a run by id or prefix, the run's files.

An id on the command line is a whole id or any unique prefix of at least
MIN_PREFIX characters. A prefix that matches no run is an unknown id and one
that matches several is ambiguous: both are failures (exit status 1) whose
message lists what matched; a shorter prefix is bad usage (exit status 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fusion_runner.core import clientdb, rundir
from fusion_runner.core import config as config_module
from fusion_runner.core.errors import ConfigError, UnknownRun
from fusion_runner.core.store import Store

MIN_PREFIX = 4
SHOWN_MATCHES = 5


class UsageError(Exception):
    """A command was given something it cannot use (exit status 2)."""


@contextlib.contextmanager
def open_store(settings: config_module.Config) -> Iterator[Store]:
    try:
        # Never created here (SPEC §8): a wrong path is one line naming it, not
        # a new empty database that looks as if every run were gone.
        store = clientdb.open_existing(settings.database_url)
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


def resolve_all(store: Store, given_ids: list[str]) -> list[tuple[str, str | UnknownRun]]:
    """Each id as given with the run it names, or why it names none: all looked up
    before a command changes anything, so that a bad one changes nothing."""
    resolved: list[tuple[str, str | UnknownRun]] = []
    for given in given_ids:
        try:
            resolved.append((given, resolve(store, given)))
        except UnknownRun as error:
            resolved.append((given, error))
    return resolved


def run_paths(store: Store, settings: config_module.Config, run_id: str) -> rundir.RunPaths | None:
    """The run's files: in the folder the daemon recorded, else runs_dir/id (None: no folder)."""
    return clientdb.run_paths(store, settings.runs_dir, run_id)
