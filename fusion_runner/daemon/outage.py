"""When the database does not answer: how long the loop waits before trying
again, and what it says (one line when the database is lost, one when it is
back; never one per retry).

Meanwhile the loop goes on supervising its runs: exits are reaped, stops
escalated, and what could not be written (outcomes, pids, progress) waits in
memory and in the run folders until a pass succeeds.
"""

from __future__ import annotations

import logging

log = logging.getLogger("fusion_runner")
MAX_BACKOFF_SECONDS = 10.0


class Outage:
    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the first failure
        self._failures = 0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, now: float, error: str, first_wait: float) -> float:
        """Note a failed attempt; the time of the next one (doubling, at most 10 s)."""
        if self.since is None:
            self.since = now
            log.error("action=database_lost error=%s detail='runs go on being supervised; "
                      "claiming nothing until it is back'", error)
        wait = min(first_wait * 2.0 ** min(self._failures, 16), MAX_BACKOFF_SECONDS)
        self._failures += 1
        return now + wait

    def recovered(self, now: float) -> None:
        if self.since is not None:
            log.warning("action=database_back after=%.1fs attempts=%d",
                        now - self.since, self._failures)
        self.since, self._failures = None, 0
