"""What the store hands the daemon about a run: a run just claimed, a run owned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fusion_runner.core.progress import PROGRESS_COLUMNS
from fusion_runner.core.schema import claims, runs


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


# What a query for OwnedRun rows selects: the run's row and its claim's columns.
OWNED_COLUMNS = (
    runs, claims.c.process_start_ticks, claims.c.boot_id, claims.c.process_start_time,
    claims.c.run_dir, claims.c.progress_offset, claims.c.log_offset, claims.c.job_id,
    claims.c.queued_at, claims.c.pid.label("claim_pid"),
)


def owned_run(row: Any) -> OwnedRun:
    """The OwnedRun of a row selected with OWNED_COLUMNS."""
    return OwnedRun(
        id=row.id, status=row.status, pid=row.pid, pgid=row.pgid,
        process_start_ticks=row.process_start_ticks, boot_id=row.boot_id,
        process_start_time=row.process_start_time, run_dir=row.run_dir,
        progress_offset=row.progress_offset, log_offset=row.log_offset,
        progress={name: getattr(row, name) for name in PROGRESS_COLUMNS},
        job_id=row.job_id, queued=row.queued_at is not None and row.claim_pid is None,
    )
