"""What Slurm's commands say, read: squeue's lines, and the resources a run asks for.

Pure functions over text, so that the executor's decisions are testable
without a cluster.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

# States in which a job may still run or start; any other is final (COMPLETED,
# FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, PREEMPTED, ...).
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
    "RESV_DEL_HOLD", "POWER_UP_NODE", "SPECIAL_EXIT",
})
# The run's own config.ini may say what its job needs: [slurm] cpus_per_task, mem.
RESOURCE_SECTION = "slurm"


# squeue -O, each field followed by `|`: one line a job (the name last: it may hold `|`).
SQUEUE_FIELDS = "JobID:|,State:|,Reason:|,NodeList:|,RestartCnt:|,TimeLimit:|,Name:"
# States of a job (of its current attempt) that has not started: the shim has not run.
QUEUED_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                           "REQUEUE_FED", "POWER_UP_NODE", "RESV_DEL_HOLD"})


@dataclass(frozen=True)
class JobState:
    name: str  # RUNNING, PENDING, TIMEOUT, ...
    reason: str  # Resources, Priority, None, ...
    node: str
    restarts: int = 0  # how often Slurm requeued it
    time_limit: str = ""  # as squeue prints it: 1:00, 4:00:00, 2-00:00:00, UNLIMITED


def parse_squeue(text: str) -> dict[str, JobState]:
    """`squeue --noheader -O SQUEUE_FIELDS` lines by job id."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) < 6 or not fields[0]:
            continue
        restarts = int(fields[4]) if fields[4].isdigit() else 0
        states[fields[0]] = JobState(fields[1].upper(), fields[2], fields[3], restarts,
                                     fields[5])
    return states


def limit_seconds(text: str) -> int | None:
    """A time limit as squeue prints it ([days-][hours:]minutes:seconds), in seconds;
    None for UNLIMITED, NOT_SET and anything else."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not (days == "" or days.isdigit()) or not 2 <= len(parts) <= 3:
        return None
    if not all(part.isdigit() for part in parts):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds + int(days or 0) * 86400


def job_resources(config_file: Path) -> list[str]:
    """sbatch options from the run's config: `[slurm] cpus_per_task` (how many processes
    the simulation runs at once: the reference simulation's workers) and `[slurm] mem`."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config_file)
    except configparser.Error:
        return []
    if not parser.has_section(RESOURCE_SECTION):
        return []
    section = parser[RESOURCE_SECTION]
    options = []
    cpus = section.get("cpus_per_task", "").strip()
    if cpus.isdigit() and int(cpus) > 0:
        options.append(f"--cpus-per-task={int(cpus)}")
    mem = section.get("mem", "").strip()
    if mem:
        options.append(f"--mem={mem}")
    return options
