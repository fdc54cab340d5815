"""The statuses of the `runs` table (SPEC §1).

A leaf with no SQLAlchemy import: the pure modules (outcome) and the
client's display (view, watch) need the statuses, not the database.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING})


def is_final(status: str) -> bool:
    """Whether a status as stored (any text) is one a run never leaves."""
    return status in FINAL_STATUSES
