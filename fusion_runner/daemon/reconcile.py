"""Restart: what an earlier daemon with our worker id left.

Live runs are adopted, ended ones get their true outcome, unspawned ones are
requeued; a run whose processes may live unseen refuses the start
(CannotInspect) before anything is written for any run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fusion_runner.core import rundir
from fusion_runner.core.clock import utcnow
from fusion_runner.core.errors import CannotInspect, InvalidRun
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import DATABASE_ERRORS, OwnedRun
from fusion_runner.daemon.liverun import LiveRun
from fusion_runner.daemon.progresspass import ProgressPass
from fusion_runner.daemon.runprogress import RunProgress
from fusion_runner.daemon.runs import error_field, final_detail, status_field, stop_reason
from fusion_runner.executors.base import RunHandle, Verdict

log = logging.getLogger("fusion_runner")


@dataclass(frozen=True)
class Sighting:
    """What reconcile saw of a run's leader before it touched anything."""

    handle: RunHandle | None  # as recorded, or as found; None: neither
    verdict: Verdict
    recorded: bool  # in the row; else found by looking (a spawn never recorded)


class Reconcile(ProgressPass):
    def reconcile(self, now: float) -> None:
        """Adopt live runs, give ended ones their true outcome, requeue unspawned ones.

        Every run's process is looked at before any run is touched, so that a
        refusal (CannotInspect) leaves every row and process as it was.
        """
        owned_runs = [owned for owned in self.store.owned_unfinished(self.config.worker_id)
                      # adopted by an earlier try that a database error cut short
                      if owned.id not in self.live]
        sightings = self._look_at_all(owned_runs)
        for owned in owned_runs:
            if owned.id not in sightings:
                continue  # its look failed, and was logged
            try:
                self._reconcile_one(owned, sightings[owned.id], now)
            except DATABASE_ERRORS:
                raise  # the whole reconcile is tried again
            except Exception:
                # One run's unforeseen state must not keep the daemon from the others.
                _log_reconcile_failed(owned)

    def _look_at_all(self, owned_runs: list[OwnedRun]) -> dict[str, Sighting]:
        sightings: dict[str, Sighting] = {}
        for owned in owned_runs:
            try:
                sightings[owned.id] = self._look_at(owned)
            except CannotInspect:
                raise
            except DATABASE_ERRORS:
                raise
            except Exception:
                _log_reconcile_failed(owned)
        return sightings

    def _look_at(self, owned: OwnedRun) -> Sighting:
        """The run's leader and what it is now; raises CannotInspect when it may live
        unseen, before anything is written for the run."""
        recorded = self.executor.from_row(owned)
        if recorded is None:
            return self._look_for_unrecorded(owned)
        sight = self.executor.look(recorded)
        if sight.verdict is Verdict.CANNOT_TELL:
            raise CannotInspect(f"run {owned.id}: process {recorded.pid} exists but cannot be "
                                f"inspected ({sight.why}); {_refusal(owned)}")
        return Sighting(recorded, sight.verdict, recorded=True)

    def _look_for_unrecorded(self, owned: OwnedRun) -> Sighting:
        found = self.executor.find_unrecorded(owned.id)
        if found is not None:
            return Sighting(found, Verdict.ALIVE, recorded=False)
        self._refuse_if_hidden(owned)
        return Sighting(None, Verdict.GONE, recorded=False)

    def _refuse_if_hidden(self, owned: OwnedRun) -> None:
        """Refuse when a spawn may have happened, has not ended, and may live unseen."""
        try:
            paths = rundir.RunPaths.under(self.config.runs_dir, owned.id)
        except InvalidRun:
            return  # nothing can have been started under such an id
        why = self.executor.may_hide(paths)
        if why is not None:
            raise CannotInspect(f"run {owned.id}: its start was never recorded and no process "
                                f"of it is visible, but {why}; {_refusal(owned)}")

    def _reconcile_one(self, owned: OwnedRun, sighting: Sighting, now: float) -> None:
        handle = sighting.handle
        if handle is None:
            self._reconcile_unrecorded(owned, now)
            return
        if not sighting.recorded:
            name = self.executor.queue_name(handle)
            if name is not None:
                self.store.record_job(owned.id, name)
            found = self.executor.identity(handle)
            if found is not None and not owned.queued:
                paths = rundir.RunPaths.under(self.config.runs_dir, owned.id)
                # RUNNING -> RUNNING with the pid, pgid, started_at it lacked
                self.store.mark_started(owned.id, pid=found.pid, pgid=found.pgid,
                                        process_start_ticks=found.process_start_ticks,
                                        boot_id=found.boot_id,
                                        process_start_time=found.process_start_time,
                                        run_dir=paths.run_dir, node=found.node)
            # A queued one: its start is recorded by the passes, when it starts.
        elif sighting.verdict is Verdict.ALIVE:
            self._record_better_identity(owned.id, handle)
        self._adopt(owned, handle, sighting.verdict, now)

    def _record_better_identity(self, run_id: str, handle: RunHandle) -> None:
        """A row of an earlier version lacks what identifies its run without the clock."""
        better = self.executor.upgrade_identity(handle)
        if better is not None and better.process_start_ticks is not None:
            # RUNNING -> RUNNING (claim's identity columns only)
            self.store.record_identity(run_id, process_start_ticks=better.process_start_ticks,
                                       boot_id=better.boot_id)

    def _adopt(self, owned: OwnedRun, handle: RunHandle, verdict: Verdict, now: float) -> None:
        run = LiveRun.adopt(owned, handle, self.config.runs_dir, self.config.progress_source)
        self.live[run.id] = run
        if verdict is Verdict.ALIVE:
            self._watch(run)
            # Where progress goes on from: what the last daemon had applied.
            log.info("run=%s action=adopted pid=%d progress_offset=%d log_offset=%s",
                     run.id, handle.pid, run.progress.file_offset, run.progress.log_offset)
            self._event(run.id, "adopted", f"by worker {self.config.worker_id} pid={handle.pid}")
            if any(value is not None for value in owned.progress.values()):
                run.progress_moved_at = now  # it wrote progress: a stall counts from here
        else:
            # GONE or REUSED (CANNOT_TELL was refused).
            run.leader_exited()
            self.executor.note_ended_unwatched(handle, verdict)
        if owned.status != run.row_status:
            self._begin_stop(run, stop_reason(owned.status), now, owned.status)

    def _reconcile_unrecorded(self, owned: OwnedRun, now: float) -> None:
        # The daemon died after claiming: before spawning (nothing runs), or
        # after spawning but before recording it (no leader of it is alive: a
        # live one was adopted). Only the first may run again, and "never
        # spawned" needs more than the absence of a live process.
        try:
            paths = rundir.RunPaths.under(self.config.runs_dir, owned.id)
        except InvalidRun:
            # Claimed, then the daemon died before failing it: nothing can
            # have started, and the next claim fails it with the reason.
            if self.store.release_claim(owned.id):
                self._event(owned.id, "released", "claimed but never started")
            return
        expected = RunStatus.PENDING if owned.queued else RunStatus.RUNNING
        if owned.status != expected:
            self._complete_client_status(owned.id, owned.status)
        elif self.executor.left_a_trace(paths):
            self._finish_unwatched_start(owned.id, paths, expected)
        # RUNNING -> PENDING: claimed, but nothing was ever spawned.
        elif self.store.release_claim(owned.id):
            log.warning("run=%s action=requeued reason=claimed_but_never_started", owned.id)
            self._event(owned.id, "released", "claimed but never started")

    def _finish_unwatched_start(
        self, run_id: str, paths: rundir.RunPaths, expected: str = RunStatus.RUNNING
    ) -> None:
        """A run whose spawn an earlier daemon began but never recorded, now ended."""
        reader = RunProgress.start(paths, self.config.progress_source)
        try:
            columns = reader.poll(limit=None)  # once, at start-up: all of it
            reader.finish()
        except OSError:
            columns = {}
        self._note_outputs(run_id, paths, reader.take_outputs())
        ended = self.executor.outcome_unrecorded(paths, reader.last_error)
        result = ended.outcome
        # RUNNING (or PENDING, queued) -> COMPLETED | FAILED, with what the spawn left behind
        if self.store.transition(run_id, expected, result.status, pid=ended.pid,
                                 pgid=ended.pid, started_at=ended.started_at,
                                 completed_at=utcnow(), error_message=result.error_message,
                                 **columns):
            log.info("run=%s action=finished status=%s ended_unwatched=true%s",
                     run_id, result.status, error_field(result.error_message))
            self._event(run_id, "final", final_detail(result.status, result.error_message))


def _refusal(owned: OwnedRun) -> str:
    return (f"refusing to start, the run stays {status_field(owned.status)} for a daemon "
            f"that can see it")


def _log_reconcile_failed(owned: OwnedRun) -> None:
    log.exception("run=%s action=reconcile_failed status=%s", owned.id,
                  status_field(owned.status))
