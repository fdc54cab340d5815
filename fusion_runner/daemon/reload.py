"""What a SIGHUP may change in a running daemon, and what only a restart can.

`systemctl reload` sends SIGHUP: the daemon reads its configuration again, as
at start. Settings that only shape what happens next (how many runs, how long
a stop waits, how often it looks and writes, how much it logs, how large a
run's log may grow) take effect at once; the others name the database, the
files and the runs' identity, which live runs and the worker lock depend on,
so a change to them waits for a restart and says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fusion_runner.core.config import KEYS, Config

RELOADABLE = (
    "max_concurrent_runs", "max_cores", "stop_grace_seconds", "log_level",
    "poll_interval_seconds", "progress_interval_seconds", "progress_poll_seconds",
    "stall_after_seconds", "on_stall", "max_log_bytes",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Reload:
    config: Config  # the settings to serve with from now on
    applied: dict[str, tuple[Any, Any]]  # key: (before, after)
    needs_restart: list[str]  # changed keys left as they were


def compare(running: Config, read: Config) -> Reload:
    """The running settings with the reloadable changes of `read` applied."""
    changed = [key for key in KEYS if getattr(running, key) != getattr(read, key)]
    applied = {key: (getattr(running, key), getattr(read, key))
               for key in changed if key in RELOADABLE}
    needs_restart = [key for key in changed if key not in RELOADABLE]
    config = dataclasses.replace(running, **{key: after for key, (_, after) in applied.items()})
    return Reload(config, applied, needs_restart)
