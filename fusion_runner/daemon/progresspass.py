"""Each pass's progress work: read what changed, write it to the row at once unless the
run's write budget is spent (a few writes, one more per progress interval: see
writebudget.py), with the results of `erlang_complete` events right after; link
the result folders the log names; when a run ends, its results files to the table."""

from __future__ import annotations

import logging

from fusion_runner.core import results, rundir
from fusion_runner.core.resultverbs import ResultRow
from fusion_runner.daemon import outputs
from fusion_runner.daemon.liverun import LiveRun, StopReason
from fusion_runner.daemon.runs import RunsState

log = logging.getLogger("fusion_runner")

# At most one log line per run this often about skipped progress lines.
PROBLEM_LOG_SECONDS = 1.0


class ProgressPass(RunsState):
    def _read_progress(self, now: float) -> None:
        # Inotify says which files changed; a slow sweep of all covers a missed event.
        sweep = now >= self._next_progress_sweep
        if sweep:
            self._next_progress_sweep = now + self.config.progress_poll_seconds
        if self.live:
            self._wake_by(self._next_progress_sweep)  # the loop passes only when woken
        for run in self.live.values():
            run.progress_unread |= sweep or run.id in self._progress_changed
            if not run.started:
                continue  # waiting in its executor's queue: read once its row is RUNNING
            if not (run.progress_unread or run.progress_unwritten
                    or run.progress.results_unwritten):
                continue
            # Read when a write may follow: lines faster than the budget cost one read
            # per write, and a timer, not the next line, brings the deferred one.
            ready = run.write_budget.ready_at(now, self.config.progress_interval_seconds)
            if now < ready:
                self._wake_by(ready)
                continue
            if run.progress_unread:
                run.progress_unread = False
                self._poll_progress(run, now)
            if run.progress_unwritten or run.progress.results_unwritten:
                self._write_progress(run, now)
        self._progress_changed.clear()

    def _progress_due(self, now: float) -> bool:
        """Whether a run whose files changed may be read now; for the others, the time
        their write budget allows it is the loop's next deadline."""
        due = False
        for run_id in self._progress_changed:
            run = self.live.get(run_id)
            if run is None or not run.started:
                due = True  # the pass sorts it out
                continue
            ready = run.write_budget.ready_at(now, self.config.progress_interval_seconds)
            if ready <= now:
                due = True
            else:
                self._wake_by(ready)
        return due

    def _poll_progress(self, run: LiveRun, now: float) -> None:
        if self.wakeups is not None:
            self.wakeups.rearm_progress(run.id)
        reading_log = run.progress.log_live
        try:
            run.progress_unwritten.update(run.progress.poll())
        except OSError as error:
            log.warning("run=%s action=progress_unreadable error=%s", run.id, error)
        if reading_log and not run.progress.log_live:
            self._file_took_over(run)
        if run.progress.behind:
            run.progress_unread = True  # the rest in the next pass, the other runs' turn first
            self._wake_by(now)
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
        self._record_final_results(run)

    def _record_final_results(self, run: LiveRun) -> None:
        """The run has ended: its events' results not yet written, then its results files
        (`output/*_erlang.json`, FUSION's folders linked there included), whose numbers
        are the final ones. Not for a deleted run: it has no row to show them with."""
        if run.stop_reason is StopReason.DELETED:
            run.progress.results_unwritten = {}
            return
        self._write_results(run)
        by_erlang = {point.erlang: point for point in
                     results.read_points(run.paths.output_dir, subfolders=True)}
        if by_erlang:
            self.store.record_results(run.id, [
                ResultRow(run.id, point.erlang, point.blocking_mean, point.ci_rate_block,
                          point.iterations or None)
                for point in by_erlang.values()])

    def _write_results(self, run: LiveRun) -> None:
        """The `erlang_complete` results not yet written; kept for the next pass if the
        database fails (an upsert: writing one twice is harmless)."""
        if run.progress.results_unwritten:
            self.store.record_results(run.id, [
                ResultRow(run.id, result.erlang, result.blocking_mean, result.blocking_ci,
                          result.iterations)
                for result in run.progress.results_unwritten.values()])
            run.progress.results_unwritten = {}

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
        if run.progress_unwritten:
            # RUNNING -> RUNNING (progress columns only)
            self.store.write_progress(run.id, run.progress_unwritten, run.progress.file_offset,
                                      run.progress.log_offset)
            run.progress_unwritten = {}
        run.progress_written_at = now
        run.write_budget.spend(now, self.config.progress_interval_seconds)
        self._write_results(run)
