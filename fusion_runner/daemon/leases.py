"""A daemon's lease on its runs (SPEC §7): registered at start, kept by heartbeats,
given back by a clean stop; and other daemons' expired leases declared.

A daemon registers in `fusion_runner_workers` once it has reconciled, then
heartbeats at most `lease_timeout_seconds / HEARTBEATS_PER_LEASE` apart (a
third of the lease is the SPEC's bound; a quarter leaves a slow pass room).
Each heartbeat also looks for workers whose heartbeat is older than the lease
and fails their RUNNING runs (`WorkerVerbs.declare_lost_workers`, exactly once
across daemons). A daemon that finds its own row declared lost (it was
stopped, or cut off, past the lease) says so, registers again and goes on: the
runs failed meanwhile are stopped by the loop as runs a client set to FAILED
are, their rows left as the other daemon wrote them.

The deadline is on the loop's monotonic clock; what is written is wall-clock
naive UTC (see workerverbs: the hosts' clocks must agree well within the lease).
"""

from __future__ import annotations

import logging
import os
import socket

from fusion_runner import __version__
from fusion_runner.core.clock import utcnow
from fusion_runner.core.config import Config
from fusion_runner.core.store import DATABASE_ERRORS, Store
from fusion_runner.core.workerverbs import LostWorker, Registration
from fusion_runner.daemon.runs import first_line
from fusion_runner.executors import procfs

log = logging.getLogger("fusion_runner")

HEARTBEATS_PER_LEASE = 4


class Lease:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.me: Registration | None = None  # None until started
        # When the next heartbeat is due (the loop's clock); None: not started.
        self.due_at: float | None = None
        self._registered = False

    @property
    def interval(self) -> float:
        return self.config.lease_timeout_seconds / HEARTBEATS_PER_LEASE

    def start(self, now: float, running: int) -> None:
        """Register (after reconcile, before ready). A database error is logged and the
        registration tried again at the next pass: it must not keep the daemon from
        supervising the runs it has just adopted."""
        self.me = Registration(
            worker_id=self.config.worker_id, host=socket.gethostname(),
            boot_id=procfs.boot_id(), pid=os.getpid(), version=__version__,
            started_at=utcnow(),
        )  # fmt: skip
        self.due_at = now
        try:
            self.beat(now, running)
        except DATABASE_ERRORS as error:
            log.error("action=database_error error=%s detail='registering this worker; "
                      "tried again at the next pass'",
                      f"{type(error).__name__}: {first_line(str(error))}")

    def due(self, now: float) -> bool:
        return self.due_at is not None and now >= self.due_at

    def beat(self, now: float, running: int) -> bool:
        """Heartbeat (registering when not yet or no longer registered), then declare the
        workers whose lease expired; whether this worker's own lease had expired.
        A database error leaves the heartbeat due."""
        me = self.me
        if me is None:
            return False
        expired = False
        if not self._registered or not self.store.heartbeat(me.worker_id, running):
            expired = self._register(me, running)
        for lost in self.store.declare_lost_workers(
            me.worker_id, utcnow(), self.config.lease_timeout_seconds
        ):
            _log_lost(lost)
        self.due_at = now + self.interval
        return expired

    def _register(self, me: Registration, running: int) -> bool:
        """Write our row afresh; whether it said we had been declared lost."""
        before = self.store.register_worker(me, running)
        was_registered, self._registered = self._registered, True
        if before is not None and before.lost_at is not None:
            # Stopped or cut off past the lease: another daemon failed our RUNNING
            # runs. The loop stops their processes and leaves their rows.
            log.warning("action=lease_expired worker=%s lost_at=%sZ last_heartbeat=%sZ "
                        "detail='another daemon declared this worker lost and failed its "
                        "RUNNING runs; their processes are stopped, their rows left as "
                        "written'", me.worker_id, before.lost_at.isoformat(timespec="seconds"),
                        before.heartbeat_at.isoformat(timespec="seconds"))
            return True
        if not was_registered:
            log.info("action=registered worker=%s host=%s pid=%d lease_timeout=%ss "
                     "heartbeat_every=%ss", me.worker_id, me.host, me.pid,
                     self.config.lease_timeout_seconds, round(self.interval, 3))
        else:
            log.warning("action=registered_again worker=%s detail='its row was gone'",
                        me.worker_id)
        return False

    def stop(self) -> None:
        """A clean stop, said in the row; a database error is logged, the exit goes on."""
        if self.me is None or not self._registered:
            return
        try:
            self.store.worker_stopped(self.me.worker_id)
        except DATABASE_ERRORS as error:
            log.warning("action=database_error error=%s detail='the clean stop is not "
                        "recorded: other daemons will take this worker as lost after "
                        "lease_timeout_seconds'",
                        f"{type(error).__name__}: {first_line(str(error))}")
        self.due_at = None


def _log_lost(lost: LostWorker) -> None:
    log.warning("action=worker_lost worker=%s host=%s runs=%s last_heartbeat=%sZ",
                lost.worker_id, lost.host, ",".join(lost.runs) or "none",
                lost.heartbeat_at.isoformat(timespec="seconds"))
