"""How often one run's progress columns are written: a small token bucket.

A write takes a token; tokens come back at one per progress interval, up to
`BURST`. A line that comes alone, or a few lines close together, are written
the moment they are read; only lines arriving faster than one per interval for
longer than the burst wait, and then for the next token, never longer: a
simulation appending a thousand lines a second still costs one write per
interval, every line read meanwhile merged into it.

Pure: the caller passes the time and the interval (a reload may change it).
"""

from __future__ import annotations

from dataclasses import dataclass

BURST = 3
# A token that float rounding leaves a hair short of whole still counts.
_WHOLE = 1.0 - 1e-9


@dataclass
class WriteBudget:
    tokens: float = BURST
    counted_at: float = float("-inf")  # when `tokens` was last brought up to date

    def ready_at(self, now: float, interval: float) -> float:
        """When the next write may be: `now` while a token is left, else when one is back."""
        tokens = self._tokens(now, interval)
        if tokens >= _WHOLE:
            return now
        return now + (1.0 - tokens) * interval

    def spend(self, now: float, interval: float) -> None:
        """A write was made at `now`; one made whatever the budget (a run's last write)
        leaves it empty, not in debt."""
        self.tokens = max(self._tokens(now, interval) - 1.0, 0.0)
        self.counted_at = now

    def _tokens(self, now: float, interval: float) -> float:
        if interval <= 0:
            return float(BURST)
        refilled = (now - self.counted_at) / interval
        return min(float(BURST), self.tokens + max(refilled, 0.0))
