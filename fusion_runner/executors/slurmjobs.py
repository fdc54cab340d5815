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


@dataclass(frozen=True)
class JobState:
    name: str  # RUNNING, PENDING, TIMEOUT, ...
    reason: str  # Resources, Priority, None, ...
    node: str


def parse_squeue(text: str) -> dict[str, JobState]:
    """`squeue --format=%i|%T|%r|%N|%j` lines by job id (array tasks by their own id)."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 4 or not fields[0]:
            continue
        states[fields[0]] = JobState(fields[1].strip().upper(), fields[2].strip(),
                                     fields[3].strip())
    return states


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
