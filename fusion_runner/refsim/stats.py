"""Mean and confidence intervals over iterations (standard library only).

Two intervals: the refsim's own 95 % Student-t one (`mean_ci`, its progress
events and `ci_lower`/`ci_upper`), and FUSION's (`fusion_blocking`, the keys
FUSION's `{erlang}_erlang.json` has), so that one reader serves both outputs.
"""

from __future__ import annotations

import math
import statistics

# Two-sided 95 % quantiles t(0.975, df) for df = 1 .. 30.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = statistics.NormalDist().inv_cdf(0.975)
# FUSION's z (fusion/core/metrics.py, calculate_confidence_interval, at 973983bc):
# a 90 % normal interval.
FUSION_Z = 1.645


def t_975(df: int) -> float:
    """t(0.975, df): the table up to 30, then the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper); with one value the interval is the value itself."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def fusion_blocking(values: list[float], mean: float) -> dict[str, float | None]:
    """FUSION's blocking keys for per-iteration blocking probabilities `values`.

    As FUSION computes them: the sample variance, ci_rate = 1.645 * sqrt(var / n),
    ci_percent = 2 * ci_rate / mean * 100 (the interval's whole width as a
    percentage of the mean), no interval when the mean is 0. Unlike FUSION,
    which writes 0 for a single iteration, variance and interval stay null
    until there are two: one sample says nothing of the spread.
    """
    keys: dict[str, float | None] = {
        "blocking_mean": mean, "blocking_variance": None,
        "ci_rate_block": None, "ci_percent_block": None,
    }  # fmt: skip
    if len(values) < 2:
        return keys
    variance = statistics.variance(values)
    keys["blocking_variance"] = variance
    if mean > 0:
        rate = FUSION_Z * math.sqrt(variance) / math.sqrt(len(values))
        keys["ci_rate_block"], keys["ci_percent_block"] = rate, 2 * rate / mean * 100
    return keys
