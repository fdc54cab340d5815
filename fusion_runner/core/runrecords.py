"""What the store hands the daemon about a run: a run just claimed, a run owned."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClaimedRun:
    id: str
    config_json: str
    template: str


@dataclass(frozen=True)
class OwnedRun:
    """A run a daemon with this worker id claimed and has not finished."""

    id: str
    status: str  # as the row has it: a client may have written any text
    pid: int | None
    pgid: int | None
    process_start_ticks: int | None  # None in rows of earlier versions
    boot_id: str | None
    process_start_time: float | None  # what earlier versions recorded alone
    run_dir: str | None
    progress_offset: int | None
    log_offset: int | None
    progress: dict[str, float | int | None]
    # An executor's queue (Slurm): its job id, and whether the run is still
    # waiting there (its row PENDING, the claim held by this worker).
    job_id: str | None = None
    queued: bool = False
