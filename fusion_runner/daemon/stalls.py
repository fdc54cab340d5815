"""Stalls: a RUNNING run whose progress columns have not moved for
`stall_after_seconds` is marked stalled (`claims.stalled_at`, its history, one
journal line); with `on_stall = "cancel"` it is stopped as a cancel is and ends
FAILED `stalled: no progress for N s` (StopReason.STALLED). Progress that moves
again clears the mark (`unstalled`).

A move is a progress write: the loop writes a run's columns only when a poll
found one of them changed, so `progress_written_at` moving (or columns waiting
to be written) is the columns moving. A run that never wrote progress has no
`progress_moved_at` and is never marked; an adopted run that had written some
counts from its adoption.
"""

from __future__ import annotations

import logging

from fusion_runner.core.clock import utcnow
from fusion_runner.daemon.liverun import LiveRun, StopReason
from fusion_runner.daemon.runs import RunsState

log = logging.getLogger("fusion_runner")


class StallPass(RunsState):
    def _notice_stalls(self, now: float) -> None:
        after = self.config.stall_after_seconds
        for run in self.live.values():
            moved = _last_move(run, now)
            if moved is None or run.stop is not None or not run.started or run.exited:
                continue
            went_on = run.progress_moved_at is not None and moved > run.progress_moved_at
            run.progress_moved_at = moved
            if run.stalled_after is not None:
                if not went_on:
                    continue
                self._unstall(run)
            if after > 0:
                if now - moved >= after:
                    self._stall(run, after, now)
                else:
                    self._wake_by(moved + after)

    def _stall(self, run: LiveRun, after: float, now: float) -> None:
        # The mark first: a database error leaves the run unmarked, and the next pass
        # tries again.
        self.store.set_stalled(run.id, utcnow())
        run.stalled_after = after
        log.warning("run=%s action=stalled after=%gs on_stall=%s", run.id, after,
                    self.config.on_stall)
        self._event(run.id, "stalled", f"no progress for {after:g} s")
        if self.config.on_stall == "cancel":
            self._begin_stop(run, StopReason.STALLED, now)

    def _unstall(self, run: LiveRun) -> None:
        self.store.set_stalled(run.id, None)
        run.stalled_after = None
        log.info("run=%s action=unstalled", run.id)
        self._event(run.id, "unstalled", "progress moved again")


def _last_move(run: LiveRun, now: float) -> float | None:
    """When the run's progress columns last moved (None: never)."""
    if run.progress_unwritten:
        return now  # changed, and waiting for its write
    moved = run.progress_moved_at
    if run.progress_written_at != float("-inf") and (moved is None
                                                     or run.progress_written_at > moved):
        return run.progress_written_at
    return moved
