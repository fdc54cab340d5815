"""How many cores a run takes: the processes it runs at once, which `max_cores` admits by.

One rule, read from the run's configuration (its `config_json`, over its template
when the daemon has `templates_dir`), in this order:

1. `[general_settings] max_processes = N` (N >= 1): the run declares it. The
   reference simulation honours it as its worker count; for any other simulation
   it is only what the daemon counts. Never more than the Erlang points when the
   configuration names them (one worker per point at most).
2. The reference simulation (the daemon's `sim_command` runs `fusion_runner.refsim`):
   a worker per Erlang point, at most one per usable CPU: min(CPUs, points).
3. FUSION's own key `[general_settings] thread_erlangs`: true runs each Erlang point
   in a process of a pool as large as the CPUs (min(CPUs, points)); false runs them
   one after another in one process (1).
4. Anything else: 1.

A value that cannot be read (a missing or malformed Erlang range, say) counts as
if the key were absent: the run takes 1 core rather than none, and fails later
where its simulation reads it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

GENERAL = "general_settings"
MAX_PROCESSES = "max_processes"
THREAD_ERLANGS = "thread_erlangs"
REFSIM_MODULE = "fusion_runner.refsim"
_EPSILON = 1e-9
_TRUE = {"true", "yes", "1", "on"}


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, and a Slurm job's allocation
    (SLURM_CPUS_PER_TASK, which sbatch's --cpus-per-task sets)."""
    cpus = len(os.sched_getaffinity(0)) or 1
    allocated = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cpus, int(allocated)) if allocated.isdigit() and int(allocated) > 0 else cpus


def workers(points: int, cpus: int, max_processes: int | None = None) -> int:
    """The reference simulation's worker count: one per Erlang point, at most
    `max_processes` when given, else at most one per CPU; 1 at least."""
    limit = max_processes if max_processes is not None else cpus
    return max(1, min(limit, points))


def is_refsim(sim_command: Sequence[str]) -> bool:
    """Whether the daemon's simulation command runs the reference simulation."""
    return REFSIM_MODULE in sim_command


def run_cores(
    config: Mapping[str, Mapping[str, object]], *, refsim: bool, cpus: int
) -> int:
    """The cores a run of `config` takes (see the module's rule); 1 at least."""
    general = config.get(GENERAL, {})
    points = erlang_points(general)
    declared = positive_int(general.get(MAX_PROCESSES))
    if declared is not None:
        return workers(points, cpus, declared) if points is not None else declared
    if refsim:
        return workers(points if points is not None else 1, cpus)
    if THREAD_ERLANGS in general:
        if as_bool(general[THREAD_ERLANGS]):
            return workers(points if points is not None else cpus, cpus)
        return 1
    return 1


def erlang_points(general: Mapping[str, object]) -> int | None:
    """How many Erlang loads erlang_start..erlang_stop by erlang_step names (inclusive,
    as the reference simulation reads it); None when they cannot be read."""
    start = number(general.get("erlang_start"))
    step = number(general.get("erlang_step"))
    stop = number(general.get("erlang_stop", general.get("erlang_start")))
    if start is None or step is None or stop is None or step <= 0 or start <= 0:
        return None
    if stop < start:
        return 1
    return math.floor((stop - start) / step + _EPSILON) + 1


def positive_int(value: object) -> int | None:
    """A whole number >= 1 given as a number or as text; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 1 else None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isdigit() and int(text) >= 1 else None
    return None


def number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return isinstance(value, str) and value.strip().lower() in _TRUE
