"""What the supervisor knows of one run whose processes may still exist, and its phase.

A run's life in the daemon, read in one place (`_MOVES`):

    RUNNING --stop--> STOPPING --kill--> KILLED
       |                 |                  |
     exit              exit               exit
       v                 v                  v
    EXITED --stop--> EXITED_KILL_DUE --kill--> EXITED --final--> FINAL

A stop sends TERM only to a run whose leader still lives; its KILL is due
after the grace either way, for what of the tree is left. Only an EXITED or
EXITED_KILL_DUE run whose whole tree is gone is finalised.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fusion_runner.core import rundir
from fusion_runner.core.progress import Columns
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import OwnedRun
from fusion_runner.daemon.runprogress import RunProgress
from fusion_runner.daemon.writebudget import WriteBudget
from fusion_runner.executors.base import RunHandle


class StopReason(enum.Enum):
    CANCELLED = "cancelled"
    DELETED = "deleted"
    SHUTDOWN = "shutdown"
    # Its progress had not moved for stall_after_seconds and on_stall is "cancel":
    # the daemon decided, so it ends FAILED (as SHUTDOWN does), never CANCELLED.
    STALLED = "stalled"
    # A client wrote another final status (FAILED, COMPLETED) or one the SPEC
    # does not name: the row keeps it, the processes are stopped as for a cancel.
    CLIENT_STATUS = "client_status"


class Phase(enum.Enum):
    RUNNING = "running"  # the leader lives, nothing was asked of it
    STOPPING = "stopping"  # TERM sent; KILL due at `stop.kill_at`
    KILLED = "killed"  # KILL sent; the leader has not ended yet
    EXITED = "exited"  # the leader ended; the tree may still drain
    EXITED_KILL_DUE = "exited, kill due"  # ended, stopped: KILL at `stop.kill_at` for the rest
    FINAL = "final"  # the row has its final status: forgotten


class Move(enum.Enum):
    STOP = "stop"
    KILL = "kill"
    EXIT = "exit"
    FINAL = "final"


# Every move a run can make; any other is a bug (IllegalMove).
_MOVES: dict[tuple[Phase, Move], Phase] = {
    (Phase.RUNNING, Move.STOP): Phase.STOPPING,
    (Phase.RUNNING, Move.EXIT): Phase.EXITED,
    (Phase.STOPPING, Move.KILL): Phase.KILLED,
    (Phase.STOPPING, Move.EXIT): Phase.EXITED_KILL_DUE,
    (Phase.KILLED, Move.EXIT): Phase.EXITED,
    (Phase.EXITED, Move.STOP): Phase.EXITED_KILL_DUE,
    (Phase.EXITED_KILL_DUE, Move.KILL): Phase.EXITED,
    (Phase.EXITED, Move.FINAL): Phase.FINAL,
    (Phase.EXITED_KILL_DUE, Move.FINAL): Phase.FINAL,
}


class IllegalMove(RuntimeError):
    pass


@dataclass(frozen=True)
class Stop:
    """Why and until when a run is being stopped."""

    reason: StopReason
    kill_at: float
    client_status: str | None = None  # the status a client wrote, with CLIENT_STATUS


@dataclass
class LiveRun:
    id: str
    paths: rundir.RunPaths
    process: RunHandle
    progress: RunProgress
    adopted: bool = False  # started by an earlier daemon: not our child to reap
    # pid, pgid and started_at are in the row: until then every pass tries again
    # (a write owed to the row, like unwritten progress, not a phase of the run).
    start_recorded: bool = True
    # False while it waits in its executor's queue (Slurm): the row is PENDING.
    started: bool = True
    queue_name_recorded: bool = True  # the executor's name for it is in the claim
    queue_reason: str | None = None  # why it waits, as last recorded
    started_at: datetime | None = None
    phase: Phase = Phase.RUNNING
    stop: Stop | None = None
    wait_status: int | None = None  # with EXITED, when we reaped the leader
    progress_unread: bool = False  # the file changed since it was last read
    progress_unwritten: Columns = field(default_factory=dict)
    progress_written_at: float = float("-inf")
    # How soon its next progress write may be (daemon/writebudget.py).
    write_budget: WriteBudget = field(default_factory=WriteBudget)
    # Result folders the log named that are not in the database yet.
    outputs_unrecorded: list[str] = field(default_factory=list)
    # Stalls (stall_after_seconds): when its progress columns last moved, on the
    # loop's clock (None: it never wrote progress, and is never marked), and how
    # long they had not moved when it was marked stalled (None: not marked).
    progress_moved_at: float | None = None
    stalled_after: float | None = None
    # The log cap (daemon/logcappass.py) could not cut its log: said once, not each sweep.
    log_cap_refused: bool = False

    @classmethod
    def adopt(cls, owned: OwnedRun, handle: RunHandle, runs_dir: Path,
              progress_source: str) -> LiveRun:
        """A run an earlier daemon started, its progress read on from where it stopped."""
        # The runs directory the run was started in, even if the setting changed since.
        base = Path(owned.run_dir).parent if owned.run_dir else runs_dir
        paths = rundir.RunPaths.under(base, owned.id)
        progress = RunProgress.resume(paths, progress_source, owned.progress,
                                      owned.progress_offset, owned.log_offset)
        return cls(owned.id, paths, handle, progress, adopted=True,
                   start_recorded=not owned.queued, started=not owned.queued)

    # --- what the run is now ---------------------------------------------

    @property
    def row_status(self) -> str:
        """The status its row has while nobody else changed it."""
        return RunStatus.RUNNING if self.started else RunStatus.PENDING

    @property
    def exited(self) -> bool:
        return self.phase in (Phase.EXITED, Phase.EXITED_KILL_DUE)

    @property
    def stop_reason(self) -> StopReason | None:
        return None if self.stop is None else self.stop.reason

    @property
    def kill_due(self) -> bool:
        return self.phase in (Phase.STOPPING, Phase.EXITED_KILL_DUE)

    # --- one method per move -------------------------------------------------

    def begin_stop(self, stop: Stop) -> bool:
        """Stop it once; True if its leader lives and is to be sent TERM."""
        leader_lives = self.phase is Phase.RUNNING
        self._move(Move.STOP)
        self.stop = stop
        return leader_lives

    def escalate(self) -> None:
        """Its grace has passed: KILL is being sent."""
        self._move(Move.KILL)

    def leader_exited(self, wait_status: int | None = None) -> None:
        self._move(Move.EXIT)
        self.wait_status = wait_status

    def finalised(self) -> None:
        self._move(Move.FINAL)

    def _move(self, move: Move) -> None:
        next_phase = _MOVES.get((self.phase, move))
        if next_phase is None:
            raise IllegalMove(f"run {self.id}: {move.value} in phase {self.phase.value}")
        self.phase = next_phase
