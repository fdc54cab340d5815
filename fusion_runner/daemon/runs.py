"""The supervisor's state and the moves every part of it shares: watching and
forgetting a run, beginning its stop, completing a status a client wrote.

`Supervisor` (the loop) is built from this and the modules named for what they
do to runs: `reconcile` (what an earlier daemon left), `lifecycle` (start, stop,
reap, finalise), `progresspass` (progress and result folders).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from fusion_runner.core import outcome, sharing
from fusion_runner.core.clock import utcnow
from fusion_runner.core.config import Config
from fusion_runner.core.eventverbs import event_row
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store
from fusion_runner.daemon.liverun import LiveRun, Stop, StopReason
from fusion_runner.daemon.systemd import Notifier
from fusion_runner.daemon.wakeups import WakeupSource
from fusion_runner.executors.base import Executor

log = logging.getLogger("fusion_runner")

# Events (a run's history) waiting for the database at most: beyond, the oldest go.
MAX_UNWRITTEN_EVENTS = 10_000


class RunsState:
    def __init__(
        self,
        config: Config,
        store: Store,
        executor: Executor,
        wakeups: WakeupSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.wakeups = wakeups
        self.clock = clock
        self.notifier = notifier or Notifier({})
        self.live: dict[str, LiveRun] = {}
        self.stopping = False
        self._next_deadline: float | None = None
        self._progress_changed: set[str] = set()
        self._next_progress_sweep = 0.0
        self._problems_logged_at: dict[str, float] = {}
        self._capacity_freed = True
        self._run_cores: dict[str, int] = {}  # admission.py: the cores of each live run
        # Failed runs whose final status a database error kept from the row.
        self._unwritten_failures: dict[str, str] = {}
        self._modes = sharing.modes_for(config.group_write)
        # Runs' history not yet written: flushed once per pass (`_flush_events`).
        self._unwritten_events: list[dict[str, Any]] = []

    def _event(self, run_id: str, event: str, detail: str | None = None) -> None:
        """Note in the run's history what was just done to it, now, by this worker."""
        events = self._unwritten_events
        if len(events) >= MAX_UNWRITTEN_EVENTS:
            if len(events) == MAX_UNWRITTEN_EVENTS:
                log.warning("action=history_dropped detail='the database has not taken runs' "
                            "history for a long time; the oldest events go'")
            del events[0]
        events.append(event_row(run_id, event, detail, self.config.worker_id, utcnow()))

    def _flush_events(self) -> None:
        """Write the history noted since the last flush, in one statement. After the
        state changes it describes have committed: a database error loses none of
        them, and leaves the events for the next pass."""
        if self._unwritten_events:
            batch = list(self._unwritten_events)
            self.store.add_events(batch)
            del self._unwritten_events[: len(batch)]

    def _begin_stop(
        self, run: LiveRun, reason: StopReason, now: float, client_status: str | None = None
    ) -> None:
        stop = Stop(reason, now + self.config.stop_grace_seconds, client_status)
        if client_status is not None and client_status not in RunStatus.__members__:
            log.warning("run=%s action=unknown_status status=%r detail='not a status of the "
                        "SPEC: taken as a final status written by a client'",
                        run.id, client_status)
        if reason in (StopReason.CANCELLED, StopReason.CLIENT_STATUS, StopReason.DELETED):
            self._event(run.id, "cancel_seen",
                        "row deleted" if client_status is None else f"status={client_status}")
        if run.begin_stop(stop):
            self.executor.terminate(run.process)
            self._event(run.id, "sigterm", f"reason={reason.value} pgid={run.process.pgid}")
            log.info("run=%s action=stopping reason=%s%s pgid=%d", run.id, reason.value,
                     f" status={client_status!r}" if reason is StopReason.CLIENT_STATUS else "",
                     run.process.pgid)

    def _complete_client_status(self, run_id: str, status: str) -> None:
        """completed_at of a run a client ended, once no process of it is left.

        The row keeps the client's status and message. A run set back to
        PENDING gets none: it is to run again.
        """
        # X -> X (completed_at only), X being CANCELLED, FAILED, COMPLETED or any other text
        if status != RunStatus.PENDING and self.store.complete_client_status(run_id, status):
            log.info("run=%s action=finished status=%s", run_id, status_field(status))
            self._event(run_id, "final", f"{status} (written by a client)")

    def _watch(self, run: LiveRun) -> None:
        if self.wakeups is not None:
            end_pid = self.executor.end_watch_pid(run.process)
            if end_pid is not None:
                self.wakeups.watch_exit(run.id, end_pid)
            if run.progress.reads_file:
                self.wakeups.watch_progress(run.id, run.paths.progress_file)
            if run.progress.log_live:  # never with progress_source "file"
                self.wakeups.watch_log(run.id, run.paths.log_file)

    def _forget(self, run: LiveRun) -> None:
        run.finalised()
        self.executor.release(run.process)
        del self.live[run.id]
        self._capacity_freed = True
        self._problems_logged_at.pop(run.id, None)
        if self.wakeups is not None:
            self.wakeups.unwatch_progress(run.id)

    def _wake_by(self, deadline: float) -> None:
        if self._next_deadline is None or deadline < self._next_deadline:
            self._next_deadline = deadline


def stop_reason(client_status: str | None) -> StopReason:
    """Why a run is stopped when its row has `client_status` (None: deleted)."""
    if client_status is None:
        return StopReason.DELETED
    if client_status == RunStatus.CANCELLED:
        return StopReason.CANCELLED
    return StopReason.CLIENT_STATUS


def status_field(status: str) -> str:
    return status if status in RunStatus.__members__ else repr(status)


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def error_field(message: str | None) -> str:
    return f" error={first_line(message)!r}" if message else ""


def exit_detail(wait_status: int | None, adopted: bool) -> str:
    """How a run's leader ended, for its history: `exit code 0`, `signal SIGKILL`."""
    if wait_status is None:
        return "not this daemon's child: see the final status" if adopted else "unknown"
    try:
        code = os.waitstatus_to_exitcode(wait_status)
    except ValueError:
        return f"wait status {wait_status}"
    return f"signal {outcome.signal_name(-code)}" if code < 0 else f"exit code {code}"


def final_detail(status: str, message: str | None) -> str:
    """The final status written, with its message's first line."""
    line = first_line(message or "")
    return f"{status}: {line}" if line else str(status)


def stall_message(seconds: float | None) -> str:
    """The error_message of a run stopped because its progress stalled."""
    return f"stalled: no progress for {seconds or 0:g} s"
