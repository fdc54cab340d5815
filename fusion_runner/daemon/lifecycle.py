"""Each pass's moves of live runs: start (claim, spawn, record), notice what clients
did, stop and kill, reap, finalise (its log cut to the cap first). Every write of a
final status is here."""

from __future__ import annotations

import logging
import os
import sys

from fusion_runner.core import outcome, rundir
from fusion_runner.core.clock import utcnow
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import ClaimedRun
from fusion_runner.daemon.admission import Admission
from fusion_runner.daemon.liverun import LiveRun, StopReason
from fusion_runner.daemon.logcappass import LogCapPass
from fusion_runner.daemon.reconcile import Reconcile
from fusion_runner.daemon.runprogress import RunProgress
from fusion_runner.daemon.runs import (
    error_field,
    exit_detail,
    final_detail,
    stall_message,
    stop_reason,
)
from fusion_runner.executors.base import RunHandle

log = logging.getLogger("fusion_runner")

# While a stopped run's last processes are being reaped.
DRAIN_RECHECK_SECONDS = 0.01


class Lifecycle(Admission, Reconcile, LogCapPass):
    def _reap(self) -> None:
        children = {id(run.process): run for run in self.live.values()
                    if not run.exited and not run.adopted}
        handles: list[RunHandle] = [run.process for run in children.values()]
        for handle, status in self.executor.reap(handles):
            run = children.get(id(handle))
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
            if run.stop is None and status != run.row_status:
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
                self._event(run.id, "sigkill", f"after {self.config.stop_grace_seconds:g} s "
                            f"grace pgid={run.process.pgid}")
                log.warning("run=%s action=killed grace=%ss",
                            run.id, self.config.stop_grace_seconds)
            else:
                self._wake_by(run.stop.kill_at)

    def _finalise_ended_runs(self, now: float) -> None:
        # Runs whose start is in their row first: one that started and ended unseen
        # between two looks of a queueing executor (Slurm) gets its start written
        # just before its end, once the runs it may have followed have ended.
        for run in sorted(self.live.values(), key=lambda run: not run.start_recorded):
            if not run.exited:
                continue  # its leader's end wakes the loop (pidfd)
            if not self.executor.tree_gone(run.process):
                self._wake_by(now + DRAIN_RECHECK_SECONDS)
                continue
            if not run.start_recorded and run.stop is None:
                self._record_start(run, now)  # pid and started_at in the row first
            # What the simulation said last is in the row before its final status.
            self._poll_progress(run, now)
            if run.progress.behind:
                continue  # a share read; the rest in the next passes, then the end
            if run.progress_unwritten and run.stop is None:
                self._write_progress(run, now)
            # Past the cap, what the simulation wrote last is what stays to be read.
            self._cap_log(run)
            self._read_rest_of_log(run)
            self._finalise(run)
            self._forget(run)

    def _finalise(self, run: LiveRun) -> None:
        reason = run.stop_reason
        self._event(run.id, "exited", exit_detail(run.wait_status, run.adopted))
        if reason is StopReason.DELETED:
            log.info("run=%s action=stopped reason=deleted", run.id)
            self._event(run.id, "final", "row deleted")
            return
        if reason in (StopReason.CANCELLED, StopReason.CLIENT_STATUS):
            status = run.stop.client_status if run.stop is not None else None
            self._complete_client_status(run.id, status or RunStatus.CANCELLED)
            return
        if reason is StopReason.SHUTDOWN:
            result = outcome.Outcome(RunStatus.FAILED, "runner shut down")
        elif reason is StopReason.STALLED:
            result = outcome.Outcome(RunStatus.FAILED, stall_message(run.stalled_after))
        else:
            result = self.executor.outcome(run.process, run.paths, run.wait_status,
                                           run.progress.last_error, watched=not run.adopted)
        # RUNNING -> COMPLETED | FAILED; PENDING (it never left its queue) -> FAILED
        if self.store.transition(run.id, run.row_status, result.status,
                                 error_message=result.error_message, completed_at=utcnow()):
            log.info("run=%s action=finished status=%s%s", run.id, result.status,
                     error_field(result.error_message))
            self._event(run.id, "final", final_detail(result.status, result.error_message))
            return
        # A client cancelled (or ended, or deleted) it while it was ending: the client wins.
        status = self.store.statuses([run.id]).get(run.id)
        if status is not None:
            self._complete_client_status(run.id, status)

    def _claim_and_spawn(self, now: float) -> None:
        # With a queue of the executor's own, max_concurrent_runs bounds the runs
        # handed to it and not ended; its row stays PENDING until it starts.
        # Locally the head of the queue starts only while its cores fit (admission.py).
        claim = self.store.hold_for_queue if self.executor.queues else self.store.claim_next
        admit = None if self.executor.queues else self._admit
        while len(self.live) < self.config.max_concurrent_runs:
            claimed = claim(self.config.worker_id, busy=self.live, admit=admit)
            if claimed is None:
                return
            self._start(claimed, now)

    def _start(self, claimed: ClaimedRun, now: float) -> None:
        self._event(claimed.id, "claimed", "held for the executor's queue"
                    if self.executor.queues else None)
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
        queued = self.executor.queues
        run = LiveRun(claimed.id, paths, spawned,
                      RunProgress.start(paths, self.config.progress_source),
                      start_recorded=False, started_at=None if queued else utcnow(),
                      started=not queued, queue_name_recorded=not queued)
        self.live[run.id] = run
        self._watch(run)
        if queued:
            job = self.executor.queue_name(spawned)
            log.info("run=%s action=queued job=%s", run.id, job)
            self._event(run.id, "queued", f"job={job}")
        else:
            log.info("run=%s action=started pid=%d", run.id, spawned.pid)
            self._event(run.id, "started", f"pid={spawned.pid}")
        self._record_start(run, now)

    def _record_starts(self, now: float) -> None:
        if self.executor.queues:
            # Ends before starts: the executor starts a queued run when another ends,
            # and one look shows both. Written in that order, the rows never have
            # more RUNNING runs than the executor runs.
            self._finalise_ended_runs(now)
        for run in list(self.live.values()):
            if run.started and run.stop is None and self.executor.requeued(run.process):
                self._requeue(run)
            if not run.start_recorded:
                self._record_start(run, now)

    def _record_start(self, run: LiveRun, now: float) -> None:
        if not run.queue_name_recorded:
            self._record_queue_name(run)
        started = self.executor.identity(run.process)
        if started is None:  # still in the executor's queue
            self._record_queue_reason(run)
            return
        if not run.started:
            run.started, run.started_at = True, utcnow()
            log.info("run=%s action=started pid=%d node=%s", run.id, started.pid,
                     started.node or "-")
            self._event(run.id, "started", f"pid={started.pid} node={started.node or '-'}")
        # RUNNING (claimed) -> RUNNING with pid, pgid, started_at; PENDING (queued)
        # -> RUNNING with them. A database error leaves start_recorded False and a
        # later pass tries again.
        recorded = self.store.mark_started(
            run.id, pid=started.pid, pgid=started.pgid,
            process_start_ticks=started.process_start_ticks, boot_id=started.boot_id,
            process_start_time=started.process_start_time, run_dir=run.paths.run_dir,
            started_at=run.started_at, node=started.node,
            expected=RunStatus.PENDING if self.executor.queues else RunStatus.RUNNING,
        )
        run.start_recorded = True
        if not recorded:
            # Cancelled or deleted between claim and start: stop it now.
            self._notice_client_changes(now)

    def _record_queue_reason(self, run: LiveRun) -> None:
        reason = self.executor.queue_reason(run.process)
        if reason != run.queue_reason:
            self.store.record_queue_reason(run.id, reason)
            run.queue_reason = reason

    def _record_queue_name(self, run: LiveRun) -> None:
        name = self.executor.queue_name(run.process)
        if name is not None:
            self.store.record_job(run.id, name)
        run.queue_name_recorded = True

    def _requeue(self, run: LiveRun) -> None:
        """Its executor put it back in its queue: the same run, PENDING until it starts
        again (the earlier attempt's exit record set aside by the executor)."""
        # RUNNING -> PENDING (requeued)
        self.store.requeue(run.id)
        run.started, run.start_recorded, run.started_at = False, False, None
        log.info("run=%s action=requeued", run.id)
        self._event(run.id, "requeued", "by the executor")

    def _fail_before_spawn(self, run_id: str, message: str) -> None:
        log.error("run=%s action=failed reason=%s", run_id, message)
        self._unwritten_failures[run_id] = message
        self._capacity_freed = True
        self._write_failures()

    def _write_failures(self) -> None:
        # A run held for the executor's queue kept its PENDING row.
        expected = RunStatus.PENDING if self.executor.queues else RunStatus.RUNNING
        for run_id, message in list(self._unwritten_failures.items()):
            # RUNNING -> FAILED (nothing was spawned); PENDING -> FAILED (held, not queued)
            if self.store.transition(run_id, expected, RunStatus.FAILED,
                                     error_message=message, completed_at=utcnow()):
                self._event(run_id, "final", final_detail(RunStatus.FAILED, message))
            del self._unwritten_failures[run_id]
