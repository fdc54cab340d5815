"""Each pass's log cap: every live run's logs/sim.log looked at (one lstat) once per
`progress_poll_seconds`, and once more as the run ends, before its log's tail is read
for a failure message; one past `max_log_bytes` is cut to its newest half
(daemon/logcap.py), and the progress reader of the log moved with what it kept."""

from __future__ import annotations

import logging
import os

from fusion_runner.daemon import logcap
from fusion_runner.daemon.liverun import LiveRun
from fusion_runner.daemon.runs import RunsState

log = logging.getLogger("fusion_runner")


class LogCapPass(RunsState):
    _next_log_cap_sweep: float = 0.0  # on the loop's clock

    def _cap_logs(self, now: float) -> None:
        if self.config.max_log_bytes == 0 or not self.live:
            return
        if now >= self._next_log_cap_sweep:
            self._next_log_cap_sweep = now + self.config.progress_poll_seconds
            for run in self.live.values():
                self._cap_log(run)
        self._wake_by(self._next_log_cap_sweep)

    def _cap_log(self, run: LiveRun) -> None:
        """Cut the run's log if it is past the cap; a file system's refusal is logged
        once per run and leaves the log as it is."""
        limit = self.config.max_log_bytes
        if limit == 0 or not run.started:
            return  # waiting in its executor's queue: nothing writes its log yet
        try:
            if os.lstat(run.paths.log_file).st_size <= limit:
                return
            cut = logcap.cap(run.paths.log_file, limit)
        except FileNotFoundError:
            return  # its folder deleted: nothing to fill
        except OSError as error:
            if not run.log_cap_refused:
                run.log_cap_refused = True
                log.warning("run=%s action=log_cap_failed path=%s error=%s",
                            run.id, run.paths.log_file, error)
            return
        if cut is not None:
            self._log_was_cut(run, cut, limit)

    def _log_was_cut(self, run: LiveRun, cut: logcap.Cut, limit: int) -> None:
        if run.progress.log is not None:
            run.progress.log.shift(cut.kept_from, cut.marker_bytes)
        log.info("run=%s action=log_capped dropped_bytes=%d total_dropped=%d max_log_bytes=%d "
                 "how=%s", run.id, cut.dropped, cut.total_dropped, limit, cut.how)
        if cut.dropped == cut.total_dropped:  # its history says so once, not per cut
            self._event(run.id, "log_capped",
                        f"older output of logs/sim.log dropped past max_log_bytes={limit}")
