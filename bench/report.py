"""The bench's output: a text table, a JSON of every figure, PNG plots of the latencies."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path

from bench.figures import SPECS, Results, Spec, Value, percentile
from bench.supervisors import BASELINE, FUSION_RUNNER, SYSTEMS

MISSING = "—"


def machine() -> dict[str, object]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release()}


def number(value: float) -> str:
    """Three significant digits, without exponents: 0.372, 2.89, 19.3, 992, 2,950."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{round(value):,}"
    return f"{value:.3g}"


def cell(spec: Spec, value: Value | None) -> str:
    if value is None:
        return MISSING
    if value.samples is not None:
        s = value.samples
        text = (f"{number(percentile(s, 0.5))} / {number(percentile(s, 0.9))} / "
                f"{number(percentile(s, 0.99))} (max {number(max(s))}, n={len(s)})")
    else:
        assert value.value is not None
        text = number(value.value)
    return text + (f" [{value.note}]" if value.note else "")


def rows(results: Results) -> list[tuple[str, str, str, str, str]]:
    """(figure, fusion-runner, baseline, ratio, goal) for every figure measured."""
    table = []
    for spec in SPECS:
        if spec.key not in results.values:
            continue
        ratio = results.ratio(spec)
        goal = results.goal(spec)
        goal_text = "" if goal is None else \
            f"{'≤' if spec.lower_is_better else '≥'} {goal:g} {results.verdict(spec)}"
        table.append((f"{spec.label} ({spec.unit})",
                      cell(spec, results.get(spec.key, FUSION_RUNNER)),
                      cell(spec, results.get(spec.key, BASELINE)),
                      MISSING if ratio is None else f"{number(ratio)}x", goal_text))
    return table


def text_table(results: Results, header: list[str]) -> str:
    body = rows(results)
    titles = ("figure (latencies: p50 / p90 / p99)", FUSION_RUNNER, BASELINE,
              "ratio", "goal (p50)")
    widths = [max(len(row[i]) for row in [titles, *body]) for i in range(len(titles))]
    lines = [*header, ""]
    for row in [titles, *body]:
        lines.append("  ".join(text.ljust(width) for text, width in zip(row, widths,
                                                                         strict=True)).rstrip())
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    lines = ["| figure | fusion-runner | baseline | ratio | goal |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def write_json(results: Results, info: dict[str, object], path: Path) -> None:
    figures = {}
    for spec in SPECS:
        if spec.key not in results.values:
            continue
        figures[spec.key] = {
            "label": spec.label, "unit": spec.unit, "lower_is_better": spec.lower_is_better,
            "goal": results.goal(spec), "verdict": results.verdict(spec),
            "ratio": results.ratio(spec),
            "systems": {system: value.summary() if (value := results.get(spec.key, system))
                        else None for system in SYSTEMS}}
    path.write_text(json.dumps({**info, "figures": figures}, indent=1) + "\n")


def require_matplotlib() -> None:
    """matplotlib is the `bench` extra's, not a dependency: say so when it is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("--out's plots need matplotlib: pip install -e '.[bench]' "
                         "(or run without --out)")


Curve = tuple[str, list[float], str]  # label, samples (ms), colour


def latency_panels(results: Results) -> list[tuple[str, list[Curve]]]:
    """A panel per latency, both systems in it; the claim's two queue depths share one."""
    panels: list[tuple[str, list[Curve]]] = []
    for spec in SPECS:
        if not spec.latency or spec.key not in results.values or spec.key == "claim_10000":
            continue
        curves: list[Curve] = []
        if spec.key == "claim_10":
            for key, label, colour in (("claim_10", "10 rows queued", "tab:blue"),
                                       ("claim_10000", "10,000 rows queued", "tab:green")):
                if (value := results.get(key, FUSION_RUNNER)) and value.samples:
                    curves.append((f"{FUSION_RUNNER}, {label}", value.samples, colour))
            panels.append(("claim: PENDING committed → pid recorded, held rows queued",
                           curves))
            continue
        for system, colour in ((FUSION_RUNNER, "tab:blue"), (BASELINE, "tab:orange")):
            if (value := results.get(spec.key, system)) and value.samples:
                curves.append((system, value.samples, colour))
        panels.append((spec.label, curves))
    return panels


def plot_latencies(results: Results, title: str, path: Path) -> None:
    """One panel per latency figure: each system's distribution as a cumulative curve
    on a log scale (the baseline is two orders of magnitude slower)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = latency_panels(results)
    columns = 2
    rows_needed = (len(panels) + 1) // columns
    figure, axes = plt.subplots(rows_needed, columns, squeeze=False,
                                figsize=(11, 2.6 * rows_needed))
    for axis, (heading, curves) in zip(axes.flat, panels, strict=False):
        for label, samples, colour in curves:
            ordered = sorted(max(sample, 0.01) for sample in samples)
            # from 0 at the fastest sample up to 1 at the slowest, one step a sample
            fractions = [i / len(ordered) for i in range(len(ordered) + 1)]
            axis.step([ordered[0], *ordered], fractions, where="post", color=colour,
                      label=label)
        axis.set_xscale("log")
        axis.set_ylim(0, 1.02)
        axis.set_title(heading, fontsize=9)
        axis.set_xlabel("ms", fontsize=8)
        axis.set_ylabel("fraction ≤", fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
