"""Each pass's moves of live runs: start (claim, spawn, record), notice what clients
did, stop and kill, reap, finalise. Every write of a final status is here."""

from __future__ import annotations

import logging
import os
import sys

from fusion_runner.core import outcome, rundir
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import ClaimedRun
from fusion_runner.daemon.liverun import LiveRun, StopReason
from fusion_runner.daemon.reconcile import Reconcile
from fusion_runner.daemon.runprogress import RunProgress
from fusion_runner.daemon.runs import error_field, stop_reason
from fusion_runner.executors.base import RunHandle

log = logging.getLogger("fusion_runner")

# While a stopped run's last processes are being reaped.
DRAIN_RECHECK_SECONDS = 0.01


class Lifecycle(Reconcile):
    def _reap(self) -> None:
        children = {run.process.pid: run for run in self.live.values()
                    if not run.exited and not run.adopted}
        handles: list[RunHandle] = [run.process for run in children.values()]
        for pid, status in self.executor.reap(handles).items():
            run = children.get(pid)
            if run is not None:
                run.leader_exited(status)
        for run in self.live.values():
            # Not our children: their end is seen, their wait status is another's.
            if run.adopted and not run.exited and not self.executor.is_alive(run.process):
                run.leader_exited()

    def _notice_client_changes(self, now: float) -> None:
        """Stop the runs whose row a client deleted or set to anything but RUNNING."""
        if not self.live:
            return
        statuses = self.store.statuses(self.live)
        for run in self.live.values():
            status = statuses.get(run.id)
            if run.stop is None and status != RunStatus.RUNNING:
                self._begin_stop(run, stop_reason(status), now, status)

    def _stop_all_for_shutdown(self, now: float) -> None:
        for run in self.live.values():
            if run.stop is None:
                self._begin_stop(run, StopReason.SHUTDOWN, now)

    def _escalate_kills(self, now: float) -> None:
        for run in self.live.values():
            if not run.kill_due or run.stop is None:
                continue
            if now >= run.stop.kill_at:
                run.escalate()
                self.executor.kill(run.process)
                log.warning("run=%s action=killed grace=%ss",
                            run.id, self.config.stop_grace_seconds)
            else:
                self._wake_by(run.stop.kill_at)

    def _finalise_ended_runs(self, now: float) -> None:
        for run in list(self.live.values()):
            if not run.exited:
                continue  # its leader's end wakes the loop (pidfd)
            if not self.executor.tree_gone(run.process):
                self._wake_by(now + DRAIN_RECHECK_SECONDS)
                continue
            # What the simulation said last is in the row before its final status.
            self._poll_progress(run, now)
            if run.progress_unwritten and run.stop is None:
                self._write_progress(run, now)
            self._read_rest_of_log(run)
            self._finalise(run)
            self._forget(run)

    def _finalise(self, run: LiveRun) -> None:
        reason = run.stop_reason
        if reason is StopReason.DELETED:
            log.info("run=%s action=stopped reason=deleted", run.id)
            return
        if reason in (StopReason.CANCELLED, StopReason.CLIENT_STATUS):
            status = run.stop.client_status if run.stop is not None else None
            self._complete_client_status(run.id, status or RunStatus.CANCELLED)
            return
        if reason is StopReason.SHUTDOWN:
            result = outcome.Outcome(RunStatus.FAILED, "runner shut down")
        else:
            result = self.executor.outcome(run.process, run.paths, run.wait_status,
                                           run.progress.last_error, watched=not run.adopted)
        # RUNNING -> COMPLETED | FAILED
        if self.store.transition(run.id, RunStatus.RUNNING, result.status,
                                 error_message=result.error_message, completed_at=utcnow()):
            log.info("run=%s action=finished status=%s%s", run.id, result.status,
                     error_field(result.error_message))
            return
        # A client cancelled (or ended, or deleted) it while it was ending: the client wins.
        status = self.store.statuses([run.id]).get(run.id)
        if status is not None:
            self._complete_client_status(run.id, status)

    def _claim_and_spawn(self, now: float) -> None:
        while len(self.live) < self.config.max_concurrent_runs:
            claimed = self.store.claim_next(self.config.worker_id, busy=self.live)
            if claimed is None:
                return
            self._start(claimed, now)

    def _start(self, claimed: ClaimedRun, now: float) -> None:
        try:
            paths = rundir.prepare(
                self.config.runs_dir, claimed.id, claimed.config_json,
                template=claimed.template, templates_dir=self.config.templates_dir,
                modes=self._modes,
            )
            argv = rundir.expand_command(self.config.sim_command, paths, sys.executable)
            env = rundir.environment(paths, os.environ)
            spawned = self.executor.spawn(paths, argv, env)
        except Exception as error:
            # Whatever stops this run before its spawn (a bad row, a folder it
            # cannot have, a command that is not there) fails this run alone.
            self._fail_before_spawn(claimed.id, str(error) or type(error).__name__)
            return
        run = LiveRun(claimed.id, paths, spawned,
                      RunProgress.start(paths, self.config.progress_source),
                      start_recorded=False, started_at=utcnow())
        self.live[run.id] = run
        self._watch(run)
        log.info("run=%s action=started pid=%d", run.id, spawned.pid)
        self._record_start(run, now)

    def _record_starts(self, now: float) -> None:
        for run in list(self.live.values()):
            if not run.start_recorded:
                self._record_start(run, now)

    def _record_start(self, run: LiveRun, now: float) -> None:
        # RUNNING (claimed) -> RUNNING with pid, pgid, started_at; a database
        # error leaves start_recorded False and a later pass tries again.
        spawned = self.executor.identity(run.process)
        recorded = self.store.mark_started(
            run.id, pid=spawned.pid, pgid=spawned.pgid,
            process_start_ticks=spawned.process_start_ticks, boot_id=spawned.boot_id,
            process_start_time=spawned.process_start_time, run_dir=run.paths.run_dir,
            started_at=run.started_at,
        )
        run.start_recorded = True
        if not recorded:
            # Cancelled or deleted between claim and spawn: stop it now.
            self._notice_client_changes(now)

    def _fail_before_spawn(self, run_id: str, message: str) -> None:
        log.error("run=%s action=failed reason=%s", run_id, message)
        self._unwritten_failures[run_id] = message
        self._capacity_freed = True
        self._write_failures()

    def _write_failures(self) -> None:
        for run_id, message in list(self._unwritten_failures.items()):
            # RUNNING -> FAILED (nothing was spawned)
            self.store.transition(run_id, RunStatus.RUNNING, RunStatus.FAILED,
                                  error_message=message, completed_at=utcnow())
            del self._unwritten_failures[run_id]
