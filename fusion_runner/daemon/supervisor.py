"""The main loop: every state change of a run happens in the daemon's run modules
(`lifecycle`, `reconcile`, `progresspass`), called from here.

`run()` reconciles what an earlier daemon left, then waits for a wake-up and
calls `step(now)`, which does one pass: reap exits, write what an earlier pass
could not, notice clients' cancels, deletions and other statuses, escalate
kills whose grace has passed, read and write progress, cut logs past the cap,
finalise ended runs, complete cancelled PENDING runs, then claim and spawn up to
capacity. Nothing else changes a run.

One rule holds here: nothing a client, the database or a simulation does ends
the daemon. A pass that fails leaves every run as it is, and the next pass
does what is left; only a bad configuration at start and a stop signal end it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from fusion_runner.core import config as config_module
from fusion_runner.core.config import Config
from fusion_runner.core.errors import ConfigError
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import DATABASE_ERRORS, Store
from fusion_runner.daemon import reload
from fusion_runner.daemon.dbwatch import DatabaseWatch, watch_database
from fusion_runner.daemon.leases import Lease
from fusion_runner.daemon.lifecycle import Lifecycle
from fusion_runner.daemon.outage import Outage
from fusion_runner.daemon.runs import first_line
from fusion_runner.daemon.stalls import StallPass
from fusion_runner.daemon.systemd import Notifier
from fusion_runner.daemon.wakeups import Reason, Wakeup, Wakeups, WakeupSource
from fusion_runner.executors.base import Executor

log = logging.getLogger("fusion_runner")

SWITCH_INTERVAL_SECONDS = 0.0005
# While runs are live, how often at most the loop looks for clients' commits
# that no wake-up announced (one PRAGMA on SQLite).
LIVE_POLL_SECONDS = 0.1
# How often at most systemd's STATUS= line is refreshed.
STATUS_SECONDS = 1.0
# How often at most one and the same failure of a pass is logged again.
TROUBLE_LOG_SECONDS = 30.0


class Supervisor(Lifecycle, StallPass):
    def __init__(
        self,
        config: Config,
        store: Store,
        executor: Executor,
        wakeups: WakeupSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        read_config: Callable[[], Config] | None = None,
    ) -> None:
        super().__init__(config, store, executor, wakeups, clock, notifier)
        # How the configuration is read again on SIGHUP; None: it is not.
        self._read_config = read_config
        self._database: DatabaseWatch | None = None
        self._status_due = 0.0
        self._status_running = -1  # running runs when the status line was last sent
        # After a failed pass, look at clients' changes again whatever data_version says.
        self._database_unsure = False
        self._trouble: tuple[str, float] = ("", float("-inf"))
        # Registration and heartbeats in the workers table (daemon/leases.py).
        self._lease = Lease(config, store)
        self._outage = Outage()
        self._retry_at = 0.0  # during an outage: when the database is tried again

    # --- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the daemon's exit status."""
        # The wake-up threads (inotify, pidfds) must get the interpreter soon
        # while the loop runs a pass: CPython's default hand-over waits 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        wakeups = self.wakeups = self.wakeups or Wakeups()
        self.executor.become_reaper()
        wakeups.catch_stop_signals(self.stop)
        self._database = watch_database(self.store, self.config.database_url, wakeups,
                                        self.clock, lambda: self.config.poll_interval_seconds)
        try:
            self._reconcile_until_done(wakeups)
        except BaseException:
            self._database.close()
            wakeups.close()  # a refusal (CannotInspect) ends the daemon before it serves
            raise
        # Registered once reconciled: a heartbeat vouches for runs the daemon watches.
        self._lease.start(self.clock(), self._running_count())
        # That write of ours must not pass for the cause of the next database wake-up.
        self._database.woken_by_others()
        self.notifier.ready()
        log.info("action=ready worker=%s database=%s runs_dir=%s max_concurrent_runs=%d",
                 self.config.worker_id, config_module.redacted_url(self.config.database_url),
                 self.config.runs_dir, self.config.max_concurrent_runs)
        try:
            self._serve(wakeups, self._database)
        finally:
            self._lease.stop()  # a clean stop: no other daemon takes this one as lost
            self.notifier.stopping()
            self._database.close()
            wakeups.close()
        log.info("action=exit detached_runs=%s", ",".join(self.live) or "none")
        return 0

    def _serve(self, wakeups: WakeupSource, database: DatabaseWatch) -> None:
        rechecks: list[float] = []
        watchdog_at = self.clock()
        woken = True  # the first pass is due
        while not self._finished():
            now = self.clock()
            watchdog_at = self._ping_watchdog(now, watchdog_at)
            if woken or self._due(now, rechecks) or not self._quiet_look(database):
                self._guarded_pass(now, database)
            deadlines = [d for d in (self._next_deadline, *rechecks[:1], watchdog_at) if d]
            timeout = self.config.poll_interval_seconds
            if self.live and not database.exact:
                # data_version makes a look for clients' commits nearly free: with
                # runs to stop, do not wait for a missed wake-up (see `_take`).
                timeout = min(timeout, LIVE_POLL_SECONDS)
            if deadlines:
                timeout = min(timeout, max(min(deadlines) - self.clock(), 0.0))
            taken = wakeups.wait(timeout)
            rechecks = self._take(taken, rechecks)
            # A progress change of a run whose write must wait needs no pass before then.
            woken = (any(wakeup.reason is not Reason.PROGRESS for wakeup in taken)
                     or self._progress_due(self.clock()))

    def _due(self, now: float, rechecks: list[float]) -> bool:
        """Whether a deadline a pass set (a timer, a kill, a sweep) or a re-check has come."""
        return any(at is not None and at <= now
                   for at in (self._next_deadline, *rechecks[:1]))

    def _quiet_look(self, database: DatabaseWatch) -> bool:
        """After a wait that nothing woke and no deadline ended (the live poll): whether
        one look finds no client's commit, so that no pass is needed. The look is one
        PRAGMA; a pass costs some twenty times that, twenty times a second."""
        if self._outage.ongoing or self._database_unsure:
            return False
        try:
            if not database.changed_by_others():
                return True
        except DATABASE_ERRORS:
            return False  # the pass meets it and says so
        self._database_unsure = True  # what the look found is the pass's to notice
        return False

    def _guarded_pass(self, now: float, database: DatabaseWatch) -> None:
        """One pass and the status line; the one place where a failure stops, and only
        for this pass: what it did not do, the next pass does."""
        if self._outage.ongoing and now < self._retry_at:
            # Backing off: the runs are still supervised, the database left alone.
            self._supervise_locally(now)
            self._wake_by(self._retry_at)
            return
        try:
            changed = database.changed_by_others() or self._database_unsure
            self.step(now, database_changed=changed)
            self._report_status(now, changed)
            self._database_unsure = False
            self._outage.recovered(now)
        except DATABASE_ERRORS as error:
            # Locked past the busy timeout, unreachable, read-only: every run
            # stays as it is and its unwritten changes wait in memory.
            self._database_unsure = True
            self._retry_at = self._outage.failed(
                now, f"{type(error).__name__}: {first_line(str(error))}",
                self.config.poll_interval_seconds)
            self._supervise_locally(now)
            self._wake_by(self._retry_at)
        except Exception as error:
            # A value or state nobody foresaw: the traceback is for us, the
            # runs must go on being supervised.
            self._pass_failed(now, "internal_error", error, with_traceback=True)

    def _supervise_locally(self, now: float) -> None:
        """What needs no database: exits reaped, stops escalated to SIGKILL."""
        try:
            self._reap()
            self._escalate_kills(now)
        except Exception as error:
            self._pass_failed(now, "internal_error", error, with_traceback=True)

    def _pass_failed(
        self, now: float, action: str, error: Exception, *, with_traceback: bool = False
    ) -> None:
        self._database_unsure = True
        self._wake_by(now + self.config.poll_interval_seconds)
        text = f"{type(error).__name__}: {first_line(str(error))}"
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
                self._reload()
            database = database or wakeup.reason is Reason.DATABASE
        now = self.clock()
        # Most likely our own commit: a client's coinciding with it is still seen
        # within LIVE_POLL_SECONDS, without a burst of passes after every progress write.
        if database and self._database is not None and self._database.woken_by_others():
            return [now + delay for delay in self._database.recheck_after]
        # Re-checks still ahead stay; one that is due is the pass about to run.
        return [at for at in rechecks if at > now]

    def _reload(self) -> None:
        """Apply what may change while runs live (daemon/reload.py); say what waits."""
        if self._read_config is None:
            log.warning("action=sighup_ignored detail='no configuration to read again'")
            return
        try:
            result = reload.compare(self.config, self._read_config())
        except ConfigError as error:
            log.error("action=reload_refused error=%s detail='the running settings stay'",
                      first_line(str(error)))
            return
        self.config = result.config
        self.executor.reconfigure(result.config)
        logging.getLogger().setLevel(result.config.log_level)
        self._capacity_freed = True  # a larger max_concurrent_runs claims at once
        for key, (before, after) in result.applied.items():
            log.info("action=reload key=%s old=%s new=%s", key, before, after)
        if result.needs_restart:
            log.warning("action=reload_needs_restart keys=%s detail='changed in the "
                        "configuration; they take effect when the daemon restarts'",
                        ",".join(result.needs_restart))
        if not result.applied and not result.needs_restart:
            log.info("action=reload detail='nothing changed'")

    def _ping_watchdog(self, now: float, watchdog_at: float) -> float:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return 0.0
        if now >= watchdog_at:
            self.notifier.watchdog()
            return now + interval
        return watchdog_at

    def _report_status(self, now: float, database_changed: bool) -> None:
        # A count query per pass would be most of an idle pass: once a second at most,
        # and only when the table may have changed (no query while nothing does).
        if not self.notifier.enabled or now < self._status_due:
            return
        running = self._running_count()
        if not database_changed and running == self._status_running:
            return
        self._status_due = now + STATUS_SECONDS
        self._status_running = running
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
        if self.live and self.executor.poll_seconds is not None:
            # Runs elsewhere: their ends are seen by looking (one batched query).
            self._wake_by(now + self.executor.poll_seconds)
        self._record_starts(now)
        self._write_failures()
        if database_changed:
            self._notice_client_changes(now)
        if self.stopping and self.config.on_shutdown == "terminate":
            self._stop_all_for_shutdown(now)
        self._escalate_kills(now)
        self._read_progress(now)
        self._cap_logs(now)
        self._notice_stalls(now)
        self._finalise_ended_runs(now)
        if database_changed:
            self.store.complete_cancelled_pending()
        if not self.stopping and (database_changed or self._capacity_freed):
            self._capacity_freed = False
            self._claim_and_spawn(now)
        self._keep_lease(now)
        self._flush_events()  # the pass's history, once its changes have committed

    def _keep_lease(self, now: float) -> None:
        """Heartbeat when due (declaring other workers lost); wake in time for the next."""
        if self._lease.due(now) and self._lease.beat(now, self._running_count()):
            # Our lease had expired: runs another daemon failed meanwhile are
            # stopped at once, as runs a client set to FAILED are.
            self._notice_client_changes(now)
        if self._lease.due_at is not None:
            self._wake_by(self._lease.due_at)

    def _running_count(self) -> int:
        return sum(1 for run in self.live.values() if run.stop is None)

    def _take_back_lost_runs(self, now: float) -> None:
        """Runs another daemon failed while this worker was declared lost, whose
        processes may live on: watched and stopped as runs a client set to FAILED are,
        their rows left as written. Only until the worker registers again."""
        lost = [owned for owned in self.store.runs_failed_as_lost(self.config.worker_id)
                if owned.id not in self.live]
        sightings = self._look_at_all(lost)
        for owned in lost:
            if owned.id in sightings:
                self._reconcile_one(owned, sightings[owned.id], now)

    def _reconcile_until_done(self, wakeups: WakeupSource) -> None:
        while not self.stopping:
            try:
                self.reconcile(self.clock())
                self._take_back_lost_runs(self.clock())
                return
            except DATABASE_ERRORS as error:
                self._pass_failed(self.clock(), "database_error", error)
                self._take(wakeups.wait(self.config.poll_interval_seconds), [])
