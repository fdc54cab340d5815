"""The main loop: every state change of a run happens in this module.

`run()` waits for a wake-up and calls `step(now)`, which does one pass:
reap exits, notice cancels and deletions, escalate kills whose grace has
passed, finalise ended runs, complete cancelled PENDING runs, then claim and
spawn up to capacity. Nothing else changes a run.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from fusion_runner import outcome, process, rundir
from fusion_runner.config import Config, sqlite_path
from fusion_runner.errors import InvalidRun
from fusion_runner.models import RunStatus
from fusion_runner.store import ClaimedRun, Store, utcnow
from fusion_runner.wakeups import Reason, Wakeups

log = logging.getLogger("fusion_runner")

# A database wake-up can come a moment before the commit is visible.
DATABASE_RECHECK_SECONDS = 0.005
# While a stopped run's last processes are being reaped.
DRAIN_RECHECK_SECONDS = 0.01
LOG_TAIL_BYTES = 3072


class StopReason(enum.Enum):
    CANCELLED = "cancelled"
    DELETED = "deleted"
    SHUTDOWN = "shutdown"


@dataclass
class LiveRun:
    """A run whose processes may still exist."""

    id: str
    paths: rundir.RunPaths
    process: process.RunProcess
    stop_reason: StopReason | None = None
    kill_at: float | None = None
    killed: bool = False
    wait_status: int | None = None
    exited: bool = False


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: Store,
        wakeups: Wakeups | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        reap_any_child: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.wakeups = wakeups
        self.clock = clock
        self.live: dict[str, LiveRun] = {}
        self.stopping = False
        self._reap_any_child = reap_any_child
        self._next_deadline: float | None = None

    # --- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status of the daemon."""
        wakeups = self.wakeups = self.wakeups or Wakeups()
        # Orphans of our runs become ours, so they are reaped at once.
        self._reap_any_child = process.set_child_subreaper()
        wakeups.catch_stop_signals(self.stop)
        sqlite_file = sqlite_path(self.config.database_url)
        if sqlite_file is not None:
            wakeups.watch_database(sqlite_file)
        log.info("action=ready worker=%s database=%s runs_dir=%s max_concurrent_runs=%d",
                 self.config.worker_id, self.config.database_url, self.config.runs_dir,
                 self.config.max_concurrent_runs)
        try:
            self._serve(wakeups)
        finally:
            wakeups.close()
        log.info("action=exit live_runs=%d", len(self.live))
        return 0

    def _serve(self, wakeups: Wakeups) -> None:
        recheck_at: float | None = None
        while not self._finished():
            now = self.clock()
            try:
                self.step(now)
            except SQLAlchemyError as error:
                # A locked or unreachable database must not end the daemon:
                # every run stays as it is and the next pass tries again.
                log.error("action=database_error error=%s", _first_line_of(str(error)))
                self._wake_by(now + self.config.poll_interval_seconds)
            deadlines = [d for d in (self._next_deadline, recheck_at) if d is not None]
            timeout = self.config.poll_interval_seconds
            if deadlines:
                timeout = min(timeout, max(min(deadlines) - self.clock(), 0.0))
            woken = wakeups.wait(timeout)
            recheck_at = None
            if any(wakeup.reason is Reason.DATABASE for wakeup in woken):
                recheck_at = self.clock() + DATABASE_RECHECK_SECONDS

    def _finished(self) -> bool:
        if not self.stopping:
            return False
        if self.config.on_shutdown == "detach":
            return True
        return not self.live

    def stop(self) -> None:
        """Stop claiming; called from a signal handler, so it only sets a flag."""
        self.stopping = True

    def step(self, now: float) -> None:
        """One pass over every run; `now` is the monotonic clock."""
        self._next_deadline = None
        self._reap()
        self._notice_cancels_and_deletions(now)
        if self.stopping and self.config.on_shutdown == "terminate":
            self._stop_all_for_shutdown(now)
        self._escalate_kills(now)
        self._finalise_ended_runs(now)
        self.store.complete_cancelled_pending()
        if not self.stopping:
            self._claim_and_spawn(now)

    # --- one pass, in order -----------------------------------------------

    def _reap(self) -> None:
        by_pid = {run.process.pid: run for run in self.live.values() if not run.exited}
        statuses = process.reap(list(by_pid), any_child=self._reap_any_child)
        for pid, status in statuses.items():
            run = by_pid.get(pid)
            if run is not None:
                run.exited, run.wait_status = True, status

    def _notice_cancels_and_deletions(self, now: float) -> None:
        if not self.live:
            return
        statuses = self.store.statuses(self.live)
        for run in self.live.values():
            if run.stop_reason is not None:
                continue
            status = statuses.get(run.id)
            if status is None:
                self._begin_stop(run, StopReason.DELETED, now)
            elif status is RunStatus.CANCELLED:
                self._begin_stop(run, StopReason.CANCELLED, now)

    def _stop_all_for_shutdown(self, now: float) -> None:
        for run in self.live.values():
            if run.stop_reason is None:
                self._begin_stop(run, StopReason.SHUTDOWN, now)

    def _begin_stop(self, run: LiveRun, reason: StopReason, now: float) -> None:
        run.stop_reason = reason
        run.kill_at = now + self.config.stop_grace_seconds
        if not run.exited:
            process.signal_tree(run.process, signal.SIGTERM)
        log.info("run=%s action=stopping reason=%s pgid=%d", run.id, reason.value, run.process.pgid)

    def _escalate_kills(self, now: float) -> None:
        for run in self.live.values():
            if run.kill_at is None or run.killed:
                continue
            if now >= run.kill_at:
                run.killed = True
                process.signal_tree(run.process, signal.SIGKILL)
                log.warning("run=%s action=killed grace=%ss", run.id,
                            self.config.stop_grace_seconds)
            else:
                self._wake_by(run.kill_at)

    def _finalise_ended_runs(self, now: float) -> None:
        for run in list(self.live.values()):
            if not run.exited and run.stop_reason is None:
                continue
            if not process.tree_gone(run.process):
                self._wake_by(now + DRAIN_RECHECK_SECONDS)
                continue
            if not run.exited:
                # The shim is gone but was not our child to reap (adopted later).
                run.exited = True
            self._finalise(run)
            del self.live[run.id]

    def _finalise(self, run: LiveRun) -> None:
        completed_at = utcnow()
        if run.stop_reason is StopReason.DELETED:
            log.info("run=%s action=stopped reason=deleted", run.id)
            return
        if run.stop_reason is StopReason.CANCELLED:
            self._complete_cancelled(run.id, completed_at)
            return
        if run.stop_reason is StopReason.SHUTDOWN:
            result = outcome.Outcome(RunStatus.FAILED, "runner shut down")
        else:
            result = self._outcome_of(run)
        # RUNNING -> COMPLETED | FAILED
        if self.store.transition(run.id, RunStatus.RUNNING, result.status,
                                 error_message=result.error_message, completed_at=completed_at):
            log.info("run=%s action=finished status=%s%s", run.id, result.status,
                     _first_line(result.error_message))
            return
        # The client cancelled while the run was ending: the cancel wins.
        self._complete_cancelled(run.id, completed_at)

    def _complete_cancelled(self, run_id: str, completed_at: object) -> None:
        # CANCELLED -> CANCELLED (completed_at set once no process is left)
        if self.store.transition(run_id, RunStatus.CANCELLED, RunStatus.CANCELLED,
                                 completed_at=completed_at):
            log.info("run=%s action=finished status=CANCELLED", run_id)

    def _outcome_of(self, run: LiveRun) -> outcome.Outcome:
        record = _read_record(run.paths)
        return outcome.decide(record, run.wait_status, None, _log_tail(run.paths))

    def _claim_and_spawn(self, now: float) -> None:
        while len(self.live) < self.config.max_concurrent_runs:
            claimed = self.store.claim_next(self.config.worker_id)
            if claimed is None:
                return
            self._start(claimed, now)

    def _start(self, claimed: ClaimedRun, now: float) -> None:
        try:
            paths = rundir.prepare(self.config.runs_dir, claimed.id, claimed.config_json)
            argv = rundir.expand_command(self.config.sim_command, paths, sys.executable)
            env = rundir.environment(paths, os.environ)
            spawned = process.spawn(paths, argv, env, self.config.stop_grace_seconds)
        except (InvalidRun, OSError) as error:
            self._fail_before_spawn(claimed.id, str(error))
            return
        run = LiveRun(claimed.id, paths, spawned)
        self.live[run.id] = run
        if self.wakeups is not None:
            self.wakeups.watch_exit(run.id, spawned.pid)
        recorded = self.store.mark_started(
            run.id, pid=spawned.pid, pgid=spawned.pgid,
            process_start_time=spawned.shim.start_time, run_dir=paths.run_dir,
        )
        log.info("run=%s action=started pid=%d", run.id, spawned.pid)
        if not recorded:
            # Cancelled or deleted between claim and spawn: the next pass stops it.
            self._notice_cancels_and_deletions(now)

    def _fail_before_spawn(self, run_id: str, message: str) -> None:
        # RUNNING -> FAILED (nothing was spawned)
        self.store.transition(run_id, RunStatus.RUNNING, RunStatus.FAILED,
                              error_message=message, completed_at=utcnow())
        log.error("run=%s action=failed reason=%s", run_id, message)

    def _wake_by(self, deadline: float) -> None:
        if self._next_deadline is None or deadline < self._next_deadline:
            self._next_deadline = deadline


def _read_record(paths: rundir.RunPaths) -> outcome.ExitRecord | None:
    try:
        return outcome.ExitRecord.from_json(paths.exit_record.read_text())
    except (OSError, ValueError):
        return None


def _log_tail(paths: rundir.RunPaths) -> str:
    try:
        with open(paths.log_file, "rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            # One byte more than kept, so that a cut first line can be told and dropped.
            log_file.seek(max(size - LOG_TAIL_BYTES - 1, 0))
            return outcome.tail_text(log_file.read(), LOG_TAIL_BYTES)
    except OSError:
        return ""


def _first_line_of(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _first_line(message: str | None) -> str:
    return f" error={_first_line_of(message)!r}" if message else ""
