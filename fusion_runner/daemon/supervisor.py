"""The main loop: every state change of a run happens in this module.

`run()` reconciles what an earlier daemon left, then waits for a wake-up and
calls `step(now)`, which does one pass: reap exits, write what an earlier pass
could not, notice clients' cancels, deletions and other statuses, escalate
kills whose grace has passed, read and write progress, finalise ended runs,
complete cancelled PENDING runs, then claim and spawn up to capacity. Nothing
else changes a run.

One rule holds here: nothing a client, the database or a simulation does ends
the daemon. A pass that fails leaves every run as it is, and the next pass
does what is left; only a bad configuration at start and a stop signal end it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from fusion_runner.core import config as config_module
from fusion_runner.core import outcome, rundir, sharing
from fusion_runner.core.config import Config, sqlite_path
from fusion_runner.core.errors import CannotInspect, InvalidRun
from fusion_runner.core.models import RunStatus
from fusion_runner.core.store import DATABASE_ERRORS, ClaimedRun, OwnedRun, Store, utcnow
from fusion_runner.daemon import liverun, outputs
from fusion_runner.daemon.liverun import LiveRun, StopReason
from fusion_runner.daemon.runprogress import RunProgress
from fusion_runner.daemon.systemd import Notifier
from fusion_runner.daemon.wakeups import Reason, Wakeup, Wakeups
from fusion_runner.executors import local as process
from fusion_runner.executors import procfs

log = logging.getLogger("fusion_runner")

# A database wake-up comes when the writer appends to the WAL, a moment before
# its commit is visible (after the writer's fsync, longer when it is
# descheduled on a busy machine): look again after each of these.
DATABASE_RECHECK_SECONDS = (0.002, 0.008, 0.03, 0.1)
# While a stopped run's last processes are being reaped.
DRAIN_RECHECK_SECONDS = 0.01
# At most one log line per run this often about skipped progress lines.
PROBLEM_LOG_SECONDS = 1.0
SWITCH_INTERVAL_SECONDS = 0.0005
# While runs are live, how often at most the loop looks for clients' commits
# that no wake-up announced (one PRAGMA on SQLite).
LIVE_POLL_SECONDS = 0.05
# How often at most systemd's STATUS= line is refreshed.
STATUS_SECONDS = 1.0
# How often at most one and the same failure of a pass is logged again.
TROUBLE_LOG_SECONDS = 30.0


@dataclass(frozen=True)
class Sighting:
    """What reconcile saw of a run's shim before it touched anything."""

    # The shim and its group as recorded, or as found; None: neither.
    run_process: process.RunProcess | None
    sight: process.Sight
    recorded: bool  # in the row; else found by looking (a spawn never recorded)


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: Store,
        wakeups: Wakeups | None = None,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        *,
        subreaper: bool = True,
    ) -> None:
        self.config = config
        self.store = store
        self.wakeups = wakeups
        self.clock = clock
        self.notifier = notifier or Notifier({})
        self.live: dict[str, LiveRun] = {}
        self.stopping = False
        self._subreaper = subreaper
        self._reap_any_child = False
        self._next_deadline: float | None = None
        self._progress_changed: set[str] = set()
        self._next_progress_sweep = 0.0
        self._problems_logged_at: dict[str, float] = {}
        self._status_due = 0.0
        self._capacity_freed = True
        self._writes_seen = 0
        # Failed runs whose final status a database error kept from the row.
        self._unwritten_failures: dict[str, str] = {}
        self._modes = sharing.modes_for(config.group_write)
        # After a failed pass, look at clients' changes again whatever data_version says.
        self._database_unsure = False
        self._trouble: tuple[str, float] = ("", float("-inf"))

    # --- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the daemon's exit status."""
        # The wake-up threads (inotify, pidfds) must get the interpreter soon
        # while the loop runs a pass: CPython's default hand-over waits 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        wakeups = self.wakeups = self.wakeups or Wakeups()
        # Orphans of our runs become ours, so that they are reaped at once.
        self._reap_any_child = self._subreaper and process.set_child_subreaper()
        wakeups.catch_stop_signals(self.stop)
        sqlite_file = sqlite_path(self.config.database_url)
        if sqlite_file is not None:
            wakeups.watch_database(sqlite_file)
        try:
            self._reconcile_until_done(wakeups)
        except BaseException:
            wakeups.close()  # a refusal (CannotInspect) ends the daemon before it serves
            raise
        self.notifier.ready()
        log.info("action=ready worker=%s database=%s runs_dir=%s max_concurrent_runs=%d",
                 self.config.worker_id, config_module.redacted_url(self.config.database_url),
                 self.config.runs_dir, self.config.max_concurrent_runs)
        try:
            self._serve(wakeups)
        finally:
            self.notifier.stopping()
            wakeups.close()
        log.info("action=exit detached_runs=%s", ",".join(self.live) or "none")
        return 0

    def _serve(self, wakeups: Wakeups) -> None:
        rechecks: list[float] = []
        watchdog_at = self.clock()
        while not self._finished():
            now = self.clock()
            watchdog_at = self._ping_watchdog(now, watchdog_at)
            wakeups.rearm_database()  # before the look, so no later commit goes unseen
            self._guarded_pass(now)
            deadlines = [d for d in (self._next_deadline, *rechecks[:1], watchdog_at) if d]
            timeout = self.config.poll_interval_seconds
            if self.live:
                # data_version makes a look for clients' commits nearly free: with
                # runs to stop, do not wait for a missed wake-up (see `_take`).
                timeout = min(timeout, LIVE_POLL_SECONDS)
            if deadlines:
                timeout = min(timeout, max(min(deadlines) - self.clock(), 0.0))
            rechecks = self._take(wakeups.wait(timeout), rechecks)

    def _guarded_pass(self, now: float) -> None:
        """One pass and the status line; the one place where a failure stops, and only
        for this pass: what it did not do, the next pass does."""
        try:
            changed = self.store.changed_by_others() or self._database_unsure
            self.step(now, database_changed=changed)
            self._report_status(now)
            self._database_unsure = False
        except DATABASE_ERRORS as error:
            # Locked past the busy timeout, unreachable, read-only: every run
            # stays as it is and its unwritten changes wait in memory.
            self._pass_failed(now, "database_error", error)
        except Exception as error:
            # A value or state nobody foresaw: the traceback is for us, the
            # runs must go on being supervised.
            self._pass_failed(now, "internal_error", error, with_traceback=True)

    def _pass_failed(
        self, now: float, action: str, error: Exception, *, with_traceback: bool = False
    ) -> None:
        self._database_unsure = True
        self._wake_by(now + self.config.poll_interval_seconds)
        text = f"{type(error).__name__}: {_first_line(str(error))}"
        last_text, logged_at = self._trouble
        if text != last_text or now >= logged_at + TROUBLE_LOG_SECONDS:
            self._trouble = (text, now)
            log.error("action=%s error=%s retry_in=%ss", action, text,
                      self.config.poll_interval_seconds, exc_info=with_traceback)

    def _take(self, woken: list[Wakeup], rechecks: list[float]) -> list[float]:
        """Note what the wake-ups say; the database re-check times that follow."""
        database = False
        for wakeup in woken:
            if wakeup.reason is Reason.PROGRESS:
                self._progress_changed.add(wakeup.key)
            elif wakeup.reason is Reason.HANGUP:
                log.warning("action=sighup_ignored detail='the configuration is read at start "
                            "only: restart the daemon to apply a change'")
            database = database or wakeup.reason is Reason.DATABASE
        now = self.clock()
        if database:
            ours, self._writes_seen = self.store.writes != self._writes_seen, self.store.writes
            if ours:
                # Most likely our own commit; a client's coinciding with it is
                # still seen within LIVE_POLL_SECONDS, without a burst of passes
                # after every progress write.
                return [at for at in rechecks if at > now]
            return [now + delay for delay in DATABASE_RECHECK_SECONDS]
        # Re-checks still ahead stay; one that is due is the pass about to run.
        return [at for at in rechecks if at > now]

    def _ping_watchdog(self, now: float, watchdog_at: float) -> float:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return 0.0
        if now >= watchdog_at:
            self.notifier.watchdog()
            return now + interval
        return watchdog_at

    def _report_status(self, now: float) -> None:
        # A count query per pass would be most of an idle pass: once a second at most.
        if not self.notifier.enabled or now < self._status_due:
            return
        self._status_due = now + STATUS_SECONDS
        running = sum(1 for run in self.live.values() if run.stop_reason is None)
        pending = self.store.count_by_status().get(RunStatus.PENDING, 0)
        self.notifier.status(f"{running} running, {pending} pending")

    def _finished(self) -> bool:
        if not self.stopping:
            return False
        return self.config.on_shutdown == "detach" or not self.live

    def stop(self) -> None:
        """Stop claiming; called from a signal handler, so it only sets a flag."""
        self.stopping = True

    def step(self, now: float, *, database_changed: bool = True) -> None:
        """One pass over every run; `now` is the monotonic clock.

        Without `database_changed` (nobody else committed since the last pass)
        the passes that only serve progress and exits run no queries for
        clients' changes, which cannot have happened.
        """
        self._next_deadline = None
        self._reap()
        self._record_starts(now)
        self._write_failures()
        if database_changed:
            self._notice_client_changes(now)
        if self.stopping and self.config.on_shutdown == "terminate":
            self._stop_all_for_shutdown(now)
        self._escalate_kills(now)
        self._read_progress(now)
        self._finalise_ended_runs(now)
        if database_changed:
            self.store.complete_cancelled_pending()
        if not self.stopping and (database_changed or self._capacity_freed):
            self._capacity_freed = False
            self._claim_and_spawn(now)

    # --- restart: what an earlier daemon with our worker id left -------------

    def _reconcile_until_done(self, wakeups: Wakeups) -> None:
        while not self.stopping:
            try:
                self.reconcile(self.clock())
                return
            except DATABASE_ERRORS as error:
                self._pass_failed(self.clock(), "database_error", error)
                self._take(wakeups.wait(self.config.poll_interval_seconds), [])

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
        """The run's shim and what it is now; raises CannotInspect when it may live
        unseen, before anything is written for the run."""
        recorded = _recorded_process(owned)
        if recorded is None:
            return self._look_for_unrecorded(owned)
        sight = recorded.shim.look()
        if sight.verdict is process.Verdict.CANNOT_TELL:
            raise CannotInspect(f"run {owned.id}: process {recorded.pid} exists but cannot be "
                                f"inspected ({sight.why}); {_refusal(owned)}")
        return Sighting(recorded, sight, recorded=True)

    def _look_for_unrecorded(self, owned: OwnedRun) -> Sighting:
        found = process.find_shim(owned.id)
        if found is not None:
            alive = process.Sight(process.Verdict.ALIVE)
            return Sighting(process.RunProcess(found, found.pid), alive, recorded=False)
        self._refuse_if_hidden(owned)
        return Sighting(None, process.Sight(process.Verdict.GONE), recorded=False)

    def _refuse_if_hidden(self, owned: OwnedRun) -> None:
        """Refuse when a spawn may have happened, has not ended, and /proc may hide it."""
        try:
            paths = rundir.RunPaths.under(self.config.runs_dir, owned.id)
        except InvalidRun:
            return  # nothing can have been started under such an id
        if not process.left_a_trace(paths) or paths.exit_record.exists():
            return  # never spawned, or its shim has ended
        why = procfs.hidden_processes()
        if why is not None:
            raise CannotInspect(f"run {owned.id}: its start was never recorded and no process "
                                f"of it is visible, but {why}; {_refusal(owned)}")

    def _reconcile_one(self, owned: OwnedRun, sighting: Sighting, now: float) -> None:
        run_process, sight = sighting.run_process, sighting.sight
        if run_process is None:
            self._reconcile_unrecorded(owned, now)
            return
        shim = run_process.shim
        if not sighting.recorded:
            paths = rundir.RunPaths.under(self.config.runs_dir, owned.id)
            # RUNNING -> RUNNING with the pid, pgid, started_at it lacked
            self.store.mark_started(owned.id, pid=shim.pid, pgid=run_process.pgid,
                                    process_start_ticks=shim.start_ticks, boot_id=shim.boot_id,
                                    process_start_time=shim.start_time, run_dir=paths.run_dir)
        elif shim.start_ticks is None and sight.stat is not None \
                and sight.verdict is process.Verdict.ALIVE:
            run_process.shim = self._record_ticks(owned.id, shim, sight.stat)
        self._adopt(owned, run_process, sight.verdict, now)

    def _record_ticks(
        self, run_id: str, shim: process.Identity, stat: procfs.ProcStat
    ) -> process.Identity:
        """An earlier version recorded a wall-clock start alone: once adopted, the
        run's identity stops depending on the clock, in memory and in its row."""
        shim = replace(shim, start_ticks=stat.start_ticks, boot_id=procfs.boot_id())
        self.store.record_identity(run_id, process_start_ticks=stat.start_ticks,
                                   boot_id=shim.boot_id)
        return shim

    def _adopt(self, owned: OwnedRun, run_process: process.RunProcess,
               verdict: process.Verdict, now: float) -> None:
        run = LiveRun.adopt(owned, run_process, self.config.runs_dir,
                            self.config.progress_source)
        self.live[run.id] = run
        if verdict is process.Verdict.ALIVE:
            self._watch(run)
            # Where progress goes on from: what the last daemon had applied.
            log.info("run=%s action=adopted pid=%d progress_offset=%d log_offset=%s",
                     run.id, run_process.pid, run.progress.file_offset,
                     run.progress.log_offset)
        else:
            # GONE or REUSED (CANNOT_TELL was refused): a group of that number is
            # still the run's only if the pid was neither reused nor of another boot.
            run.exited = True
            run_process.owns_group = (verdict is process.Verdict.GONE
                                      and run_process.shim.of_this_boot())
        if owned.status != RunStatus.RUNNING:
            self._begin_stop(run, _stop_reason(owned.status), now, owned.status)

    def _reconcile_unrecorded(self, owned: OwnedRun, now: float) -> None:
        # The daemon died after claiming: before spawning (nothing runs), or
        # after spawning but before recording it (no shim of it is alive: a
        # live one was adopted). Only the first may run again, and "never
        # spawned" needs more than the absence of a live process.
        try:
            paths = rundir.RunPaths.under(self.config.runs_dir, owned.id)
        except InvalidRun:
            # Claimed, then the daemon died before failing it: nothing can
            # have started, and the next claim fails it with the reason.
            self.store.release_claim(owned.id)
            return
        if owned.status != RunStatus.RUNNING:
            self._complete_client_status(owned.id, owned.status)
        elif process.left_a_trace(paths):
            self._finish_unwatched_start(owned.id, paths)
        # RUNNING -> PENDING: claimed, but nothing was ever spawned.
        elif self.store.release_claim(owned.id):
            log.warning("run=%s action=requeued reason=claimed_but_never_started", owned.id)

    def _finish_unwatched_start(self, run_id: str, paths: rundir.RunPaths) -> None:
        """A run whose spawn an earlier daemon began but never recorded, now ended."""
        record = liverun.read_exit_record(paths)
        reader = RunProgress.start(paths, self.config.progress_source)
        try:
            columns = reader.poll()
            reader.finish()
        except OSError:
            columns = {}
        self._note_outputs(run_id, paths, reader.take_outputs())
        if record is None:
            result = outcome.Outcome(RunStatus.FAILED, (
                f"the runner stopped while starting this run and no exit record was left in "
                f"{paths.exit_record}; it is not started again, so that it never runs twice"))
        else:
            result = outcome.decide(record, None, reader.last_error,
                                    liverun.read_log_tail(paths))
        started = _modified_at(paths.spawn_marker)
        pid = None if record is None else record.shim_pid
        # RUNNING -> COMPLETED | FAILED, with what the spawn left behind
        if self.store.transition(run_id, RunStatus.RUNNING, result.status, pid=pid, pgid=pid,
                                 started_at=started, completed_at=utcnow(),
                                 error_message=result.error_message, **columns):
            log.info("run=%s action=finished status=%s ended_unwatched=true%s",
                     run_id, result.status, _error_field(result.error_message))

    # --- one pass, in order -----------------------------------------------

    def _reap(self) -> None:
        children = {run.process.pid: run for run in self.live.values()
                    if not run.exited and not run.adopted}
        statuses = process.reap(list(children), any_child=self._reap_any_child)
        for pid, status in statuses.items():
            run = children.get(pid)
            if run is not None:
                run.exited, run.wait_status = True, status
        for run in self.live.values():
            if run.adopted and not run.exited and not run.process.shim.is_alive():
                run.exited = True

    def _notice_client_changes(self, now: float) -> None:
        """Stop the runs whose row a client deleted or set to anything but RUNNING."""
        if not self.live:
            return
        statuses = self.store.statuses(self.live)
        for run in self.live.values():
            status = statuses.get(run.id)
            if run.stop_reason is None and status != RunStatus.RUNNING:
                self._begin_stop(run, _stop_reason(status), now, status)

    def _stop_all_for_shutdown(self, now: float) -> None:
        for run in self.live.values():
            if run.stop_reason is None:
                self._begin_stop(run, StopReason.SHUTDOWN, now)

    def _begin_stop(
        self, run: LiveRun, reason: StopReason, now: float, client_status: str | None = None
    ) -> None:
        run.stop_reason, run.client_status = reason, client_status
        run.kill_at = now + self.config.stop_grace_seconds
        if client_status is not None and client_status not in RunStatus.__members__:
            log.warning("run=%s action=unknown_status status=%r detail='not a status of the "
                        "SPEC: taken as a final status written by a client'",
                        run.id, client_status)
        if not run.exited:
            process.signal_tree(run.process, signal.SIGTERM)
            log.info("run=%s action=stopping reason=%s%s pgid=%d", run.id, reason.value,
                     f" status={client_status!r}" if reason is StopReason.CLIENT_STATUS else "",
                     run.process.pgid)

    def _escalate_kills(self, now: float) -> None:
        for run in self.live.values():
            if run.kill_at is None or run.killed:
                continue
            if now >= run.kill_at:
                run.killed = True
                process.signal_tree(run.process, signal.SIGKILL)
                log.warning("run=%s action=killed grace=%ss",
                            run.id, self.config.stop_grace_seconds)
            else:
                self._wake_by(run.kill_at)

    def _read_progress(self, now: float) -> None:
        # Inotify says which files changed; a slow sweep of all covers a missed event.
        sweep = now >= self._next_progress_sweep
        if sweep:
            self._next_progress_sweep = now + self.config.poll_interval_seconds
        for run in self.live.values():
            run.progress_unread |= sweep or run.id in self._progress_changed
            if not (run.progress_unread or run.progress_pending):
                continue
            # Read when a write may follow: a burst costs one read per interval.
            due = run.progress_written_at + self.config.progress_interval_seconds
            if now < due:
                self._wake_by(due)
                continue
            if run.progress_unread:
                run.progress_unread = False
                self._poll_progress(run, now)
            if run.progress_pending:
                self._write_progress(run, now)
        self._progress_changed.clear()

    def _poll_progress(self, run: LiveRun, now: float) -> None:
        if self.wakeups is not None:
            self.wakeups.rearm_progress(run.id)
        reading_log = run.progress.log_live
        try:
            run.progress_pending.update(run.progress.poll())
        except OSError as error:
            log.warning("run=%s action=progress_unreadable error=%s", run.id, error)
        if reading_log and not run.progress.log_live:
            self._file_took_over(run)
        run.outputs_unrecorded += run.progress.take_outputs()
        self._record_outputs(run)
        self._log_problems(run, now)

    def _file_took_over(self, run: LiveRun) -> None:
        """progress_source "auto": progress.jsonl has a valid line, the log is not read on."""
        if self.wakeups is not None:
            self.wakeups.unwatch_log(run.id)
        log.debug("run=%s action=progress_source source=file log_offset=%d",
                  run.id, run.progress.log.offset if run.progress.log is not None else 0)

    def _read_rest_of_log(self, run: LiveRun) -> None:
        """The result folders the log named after progress.jsonl took over ("auto")."""
        try:
            run.progress.finish()
        except OSError as error:
            log.warning("run=%s action=log_unreadable error=%s", run.id, error)
        run.outputs_unrecorded += run.progress.take_outputs()
        self._record_outputs(run)

    def _record_outputs(self, run: LiveRun) -> None:
        if run.outputs_unrecorded:
            self._note_outputs(run.id, run.paths, run.outputs_unrecorded)
            run.outputs_unrecorded = []

    def _note_outputs(self, run_id: str, paths: rundir.RunPaths, folders: list[str]) -> None:
        """Link each result folder the log named into output/ and note it in the database;
        a database error leaves `folders` for the next pass (both steps are idempotent)."""
        for folder in folders:
            try:
                name: str | None = outputs.link(paths.output_dir, folder)
            except (OSError, ValueError) as error:
                name = None
                log.warning("run=%s action=output_not_linked path=%r error=%s",
                            run_id, folder, error)
            if self.store.add_output(run_id, folder):
                log.info("run=%s action=output path=%r link=%s", run_id, folder,
                         f"output/{name}" if name else "none")

    def _log_problems(self, run: LiveRun, now: float) -> None:
        logged_at = self._problems_logged_at.get(run.id, -PROBLEM_LOG_SECONDS)
        if run.progress.problems and now >= logged_at + PROBLEM_LOG_SECONDS:
            self._problems_logged_at[run.id] = now
            problems = run.progress.take_problems()
            log.warning("run=%s action=progress_skipped count=%d first=%r",
                        run.id, len(problems), problems[0] if problems else "")

    def _write_progress(self, run: LiveRun, now: float) -> None:
        # RUNNING -> RUNNING (progress columns only)
        self.store.write_progress(run.id, run.progress_pending, run.progress.file_offset,
                                  run.progress.log_offset)
        run.progress_pending = {}
        run.progress_written_at = now

    def _finalise_ended_runs(self, now: float) -> None:
        for run in list(self.live.values()):
            if not run.exited:
                continue  # its shim's end wakes the loop (pidfd)
            if not process.tree_gone(run.process):
                self._wake_by(now + DRAIN_RECHECK_SECONDS)
                continue
            # What the simulation said last is in the row before its final status.
            self._poll_progress(run, now)
            if run.progress_pending and run.stop_reason is None:
                self._write_progress(run, now)
            self._read_rest_of_log(run)
            self._finalise(run)
            self._forget(run)

    def _finalise(self, run: LiveRun) -> None:
        if run.stop_reason is StopReason.DELETED:
            log.info("run=%s action=stopped reason=deleted", run.id)
            return
        if run.stop_reason in (StopReason.CANCELLED, StopReason.CLIENT_STATUS):
            self._complete_client_status(run.id, run.client_status or RunStatus.CANCELLED)
            return
        if run.stop_reason is StopReason.SHUTDOWN:
            result = outcome.Outcome(RunStatus.FAILED, "runner shut down")
        elif run.adopted and run.exit_record() is None:
            result = outcome.Outcome(RunStatus.FAILED, run.unrecoverable())
        else:
            result = run.outcome()
        # RUNNING -> COMPLETED | FAILED
        if self.store.transition(run.id, RunStatus.RUNNING, result.status,
                                 error_message=result.error_message, completed_at=utcnow()):
            log.info("run=%s action=finished status=%s%s", run.id, result.status,
                     _error_field(result.error_message))
            return
        # A client cancelled (or ended, or deleted) it while it was ending: the client wins.
        status = self.store.statuses([run.id]).get(run.id)
        if status is not None:
            self._complete_client_status(run.id, status)

    def _complete_client_status(self, run_id: str, status: str) -> None:
        """completed_at of a run a client ended, once no process of it is left.

        The row keeps the client's status and message. A run set back to
        PENDING gets none: it is to run again.
        """
        # X -> X (completed_at only), X being CANCELLED, FAILED, COMPLETED or any other text
        if status != RunStatus.PENDING and self.store.complete_client_status(run_id, status):
            log.info("run=%s action=finished status=%s", run_id, _status_field(status))

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
            spawned = process.spawn(paths, argv, env, self.config.stop_grace_seconds,
                                    file_mode=self._modes.file)
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
        shim = run.process.shim
        recorded = self.store.mark_started(
            run.id, pid=shim.pid, pgid=run.process.pgid, process_start_ticks=shim.start_ticks,
            boot_id=shim.boot_id, process_start_time=shim.start_time, run_dir=run.paths.run_dir,
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

    def _watch(self, run: LiveRun) -> None:
        if self.wakeups is not None:
            self.wakeups.watch_exit(run.id, run.process.pid)
            if run.progress.reads_file:
                self.wakeups.watch_progress(run.id, run.paths.run_dir)
            if run.progress.log_live:  # never with progress_source "file"
                self.wakeups.watch_log(run.id, run.paths.log_file.parent)

    def _forget(self, run: LiveRun) -> None:
        process.close_status_pipe(run.process)
        del self.live[run.id]
        self._capacity_freed = True
        self._problems_logged_at.pop(run.id, None)
        if self.wakeups is not None:
            self.wakeups.unwatch_progress(run.id)

    def _wake_by(self, deadline: float) -> None:
        if self._next_deadline is None or deadline < self._next_deadline:
            self._next_deadline = deadline


def _stop_reason(client_status: str | None) -> StopReason:
    """Why a run is stopped when its row has `client_status` (None: deleted)."""
    if client_status is None:
        return StopReason.DELETED
    if client_status == RunStatus.CANCELLED:
        return StopReason.CANCELLED
    return StopReason.CLIENT_STATUS


def _recorded_process(owned: OwnedRun) -> process.RunProcess | None:
    """The shim and group the row records; None if the spawn was never recorded."""
    if owned.pid is None or owned.pgid is None:
        return None
    if owned.process_start_ticks is None and owned.process_start_time is None:
        return None
    shim = process.Identity(owned.pid, owned.process_start_ticks, owned.boot_id,
                            owned.process_start_time)
    return process.RunProcess(shim, owned.pgid)


def _refusal(owned: OwnedRun) -> str:
    return (f"refusing to start, the run stays {_status_field(owned.status)} for a daemon "
            f"that can see it")


def _log_reconcile_failed(owned: OwnedRun) -> None:
    log.exception("run=%s action=reconcile_failed status=%s", owned.id,
                  _status_field(owned.status))


def _modified_at(path: Path) -> datetime | None:
    """A file's modification time as naive UTC, as the runs table stores times."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)
    except OSError:
        return None


def _status_field(status: str) -> str:
    return status if status in RunStatus.__members__ else repr(status)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _error_field(message: str | None) -> str:
    return f" error={_first_line(message)!r}" if message else ""
