"""What the bench reports: each figure's name, unit, goal, and its values per system."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.supervisors import BASELINE, FUSION_RUNNER


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    unit: str  # ms, runs/s, % core, MB, s, queries
    lower_is_better: bool = True
    latency: bool = False  # a distribution of samples, else one value
    baseline: bool = True  # whether the baseline has it at all
    goal: float | None = None  # fusion-runner's goal (p50 for a latency), SQLite
    postgres_goal: float | None = None  # where PostgreSQL's goal differs


SPECS = [
    Spec("pickup_pid", "pickup: PENDING committed → pid recorded", "ms", latency=True,
         goal=5, postgres_goal=10),
    Spec("pickup_exec", "pickup: PENDING committed → simulation executing", "ms",
         latency=True),
    Spec("cancel_cooperative", "cancel, one process: CANCELLED → no process left", "ms",
         latency=True, goal=10, postgres_goal=20),
    Spec("cancel_pool", "cancel, pool of 4 workers: CANCELLED → no process left", "ms",
         latency=True, goal=10, postgres_goal=20),
    Spec("progress_alone", "progress: a line alone → column committed", "ms", latency=True,
         goal=2),
    Spec("progress_pair", "progress: 2nd of two lines 5 ms apart → column", "ms",
         latency=True, goal=2),
    Spec("exit", "simulation exit → final status committed", "ms", latency=True, goal=5),
    Spec("throughput_1", "runs started and ended per second, 1 slot", "runs/s",
         lower_is_better=False),
    Spec("throughput_50", "runs started and ended per second, 50 slots", "runs/s",
         lower_is_better=False, goal=100),
    Spec("cpu_idle", "CPU, idle, no run", "% core"),
    Spec("cpu_live10", "CPU, idle, 10 live runs writing nothing", "% core", goal=0.5),
    Spec("queries_live10", "queries by the idle supervisor, 10 live runs", "queries",
         goal=0),
    Spec("cpu_stream", "CPU, 10 runs x 1,000 progress lines/s", "% core", goal=15),
    Spec("lag_first", "  its progress lag, first half (max)", "ms"),
    Spec("lag_second", "  its progress lag, second half (max; must not grow)", "ms"),
    Spec("rss_idle", "supervisor RSS, no run", "MB"),
    Spec("rss_live10", "supervisor RSS, 10 live runs", "MB"),
    Spec("shim_rss", "per-run overhead: the shim's RSS", "MB", baseline=False),
    Spec("claim_10", "claim: pickup with 10 held PENDING rows queued", "ms", latency=True,
         baseline=False),
    Spec("claim_10000", "claim: pickup with 10,000 held PENDING rows queued", "ms",
         latency=True, baseline=False),
    Spec("cpu_queue_10", "CPU, idle, 10 held PENDING rows", "% core", baseline=False),
    Spec("cpu_queue_10000", "CPU, idle, 10,000 held PENDING rows", "% core", baseline=False,
         goal=0.5),
    Spec("start_live100", "100 live runs: committed → all started", "ms", baseline=False),
    Spec("cpu_live100", "CPU, idle, 100 live runs writing nothing", "% core", baseline=False),
    Spec("rss_live100", "supervisor RSS, 100 live runs", "MB", baseline=False),
]
BY_KEY = {spec.key: spec for spec in SPECS}
FALLBACK_MS = 500.0


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Value:
    """One system's figure: samples (a latency, in the spec's unit) or one value."""

    samples: list[float] | None = None
    value: float | None = None
    note: str = ""

    @property
    def headline(self) -> float:
        """What goals and ratios compare: p50 of a latency, else the value."""
        if self.samples is not None:
            return percentile(self.samples, 0.5)
        assert self.value is not None
        return self.value

    def summary(self) -> dict[str, object]:
        if self.samples is None:
            return {"value": self.value, "note": self.note}
        return {"p50": percentile(self.samples, 0.5), "p90": percentile(self.samples, 0.9),
                "p99": percentile(self.samples, 0.99), "max": max(self.samples),
                "n": len(self.samples), "samples": self.samples, "note": self.note}


@dataclass
class Results:
    """Every figure measured, by key and system."""

    postgres: bool
    values: dict[str, dict[str, Value]] = field(default_factory=dict)

    def latency(self, key: str, system: str, samples_ms: list[float], note: str = "") -> None:
        # fusion-runner is woken by every change: a sample this slow waited for its
        # fallback poll instead, a lost wake-up.
        slow = sum(1 for sample in samples_ms if sample > FALLBACK_MS)
        if system == FUSION_RUNNER and slow:
            note = "; ".join(filter(None, [note, f"{slow} over {FALLBACK_MS:g} ms: "
                                                 "a lost wake-up?"]))
        self.values.setdefault(key, {})[system] = Value(samples=samples_ms, note=note)

    def scalar(self, key: str, system: str, value: float, note: str = "") -> None:
        self.values.setdefault(key, {})[system] = Value(value=value, note=note)

    def get(self, key: str, system: str) -> Value | None:
        return self.values.get(key, {}).get(system)

    def goal(self, spec: Spec) -> float | None:
        return spec.postgres_goal if self.postgres and spec.postgres_goal is not None \
            else spec.goal

    def verdict(self, spec: Spec) -> str:
        goal, value = self.goal(spec), self.get(spec.key, FUSION_RUNNER)
        if goal is None or value is None:
            return ""
        met = value.headline <= goal if spec.lower_is_better else value.headline >= goal
        return "ok" if met else "MISSED"

    def ratio(self, spec: Spec) -> float | None:
        """How many times better fusion-runner is than the baseline."""
        ours, theirs = self.get(spec.key, FUSION_RUNNER), self.get(spec.key, BASELINE)
        if ours is None or theirs is None:
            return None
        slow, fast = ((theirs.headline, ours.headline) if spec.lower_is_better
                      else (ours.headline, theirs.headline))
        return slow / fast if fast > 0 else None
