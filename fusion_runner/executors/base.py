"""Where a run executes, as the daemon sees it: one small interface.

The supervisor knows a run's processes only through an `Executor` and the
opaque `RunHandle` it returns: spawning, signalling, asking whether they live,
reading how they ended, and what to record so that a later daemon can find
them again. `executors.local.LocalExecutor` is today's (a shim per run on
this machine); another (Slurm) is a new module implementing this protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fusion_runner.core import outcome
from fusion_runner.core.config import Config
from fusion_runner.core.rundir import RunPaths
from fusion_runner.core.store import OwnedRun


class Verdict(enum.Enum):
    """What a recorded run leader is now."""

    ALIVE = "alive"
    # Ended: the kernel has no such pid, the process is a zombie, or it was
    # recorded in an earlier boot.
    GONE = "gone"
    # The pid belongs to another process: its start differs.
    REUSED = "reused"
    # It may exist, but it cannot be compared with what was recorded: neither
    # ours nor a stranger's for sure.
    CANNOT_TELL = "cannot tell"


class Sight(Protocol):
    """What a look at a run's leader found."""

    @property
    def verdict(self) -> Verdict: ...

    @property
    def why(self) -> str: ...  # with CANNOT_TELL: the cause, for an operator


class RunHandle(Protocol):
    """One spawned run, as its executor knows it; the daemon only logs these."""

    @property
    def pid(self) -> int: ...  # the leader's: logged, and watched for its end

    @property
    def pgid(self) -> int: ...


@dataclass(frozen=True)
class Identity:
    """What the row records of a started run, so that a later daemon finds it."""

    pid: int
    pgid: int
    process_start_ticks: int | None
    boot_id: str | None
    process_start_time: float | None
    node: str | None = None  # where it runs, when not on the daemon's machine


@dataclass(frozen=True)
class EndedUnrecorded:
    """What a spawn that no row recorded left behind, once it ended."""

    outcome: outcome.Outcome
    pid: int | None  # the leader's, if it said
    started_at: datetime | None  # naive UTC, as the runs table stores times


class Executor(Protocol):
    # Whether a spawned run may wait in a queue of the executor's own before it
    # starts (Slurm): its row then stays PENDING, claimed in the daemon's table,
    # until `identity` says it started.
    queues: bool
    # How often at most the loop must look at the executor's runs (one batched
    # query of them all); None: their ends wake the loop (end_watch_pid).
    poll_seconds: float | None

    def become_reaper(self) -> None:
        """Called once before serving: orphans of our runs become ours to reap."""

    def spawn(self, paths: RunPaths, argv: list[str], env: dict[str, str]) -> RunHandle:
        """Start the run; raises on failure, before anything runs."""

    def identity(self, handle: RunHandle) -> Identity | None:
        """How the started run is known; None while it waits in the executor's queue."""

    def queue_name(self, handle: RunHandle) -> str | None:
        """The executor's own name for the run (Slurm's job id), to record; None: none."""

    def queue_reason(self, handle: RunHandle) -> str | None:
        """Why a queued run waits (Slurm: Resources, Priority, ...); None: unknown."""

    def requeued(self, handle: RunHandle) -> bool:
        """Whether a started run went back to the executor's queue (Slurm's requeue):
        the same run, to start again; its handle waits again from now."""

    def from_row(self, owned: OwnedRun) -> RunHandle | None:
        """The run as its row records it; None if its spawn was never recorded."""

    def look(self, handle: RunHandle) -> Sight:
        """Whether the leader is alive, gone, reused, or cannot be told (reconcile)."""

    def upgrade_identity(self, handle: RunHandle) -> Identity | None:
        """A better identity for a live adopted run whose row lacks one; None: keep it."""

    def note_ended_unwatched(self, handle: RunHandle, verdict: Verdict) -> None:
        """An adopted run found GONE or REUSED: what of its tree may still be reached."""

    def find_unrecorded(self, run_id: str) -> RunHandle | None:
        """The live leader of a run spawned but never recorded; None if none is seen."""

    def left_a_trace(self, paths: RunPaths) -> bool:
        """Whether a spawn of this run may have happened."""

    def may_hide(self, paths: RunPaths) -> str | None:
        """Why a spawn that left a trace and has not ended may live unseen; None: it cannot."""

    def terminate(self, handle: RunHandle) -> None: ...

    def kill(self, handle: RunHandle) -> None: ...

    def is_alive(self, handle: RunHandle) -> bool:
        """During supervision; one that cannot be told counts as alive."""

    def tree_gone(self, handle: RunHandle) -> bool:
        """No process of the run is left."""

    def reap(self, children: list[RunHandle]) -> list[tuple[RunHandle, int | None]]:
        """Those of `children` (spawned by this daemon) that ended, each with its wait
        status where there is one, without blocking."""

    def outcome(self, handle: RunHandle, paths: RunPaths, wait_status: int | None,
                last_error: str | None, *, watched: bool) -> outcome.Outcome:
        """How an ended run ended; `watched` False: it ended while no daemon watched."""

    def outcome_unrecorded(self, paths: RunPaths, last_error: str | None) -> EndedUnrecorded:
        """How a run spawned but never recorded ended."""

    def end_watch_pid(self, handle: RunHandle) -> int | None:
        """A local process whose end is the run's end, for the loop to watch with
        a pidfd; None where there is none (a run elsewhere): then the loop
        learns of the end from `reap` and `is_alive` on its passes."""

    def release(self, handle: RunHandle) -> None:
        """Free what the run held in the daemon (once it is forgotten)."""

    def reconfigure(self, config: Config) -> None:
        """Take up the settings a reload changed (daemon/reload.py) for runs started next."""
