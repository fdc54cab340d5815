"""The exceptions fusion-runner raises; each docstring is its default message."""

from __future__ import annotations


class FusionRunnerError(Exception):
    """fusion-runner failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(FusionRunnerError):
    """The configuration is invalid."""


class SchemaError(FusionRunnerError):
    """The database's `runs` table does not match the contract."""


class NoDatabase(ConfigError):
    """The database does not exist yet: only the daemon creates it (SPEC §8)."""


class InvalidRun(FusionRunnerError):
    """The run's row cannot be run as it stands."""


class UnknownRun(FusionRunnerError):
    """No run has that id."""


class DatabaseError(FusionRunnerError):
    """The database refused or failed a statement (locked, unreachable, read-only)."""


class AlreadyRunning(FusionRunnerError):
    """Another fusion-runner daemon already serves this worker_id on this database."""


class CannotInspect(FusionRunnerError):
    """A run's process exists but cannot be inspected; the daemon refuses to start."""
