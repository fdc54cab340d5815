"""view: progress estimates, times, and the runs table as rich renders it (80 columns)."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import datetime, timedelta

import pytest
from rich.console import Console

from fusion_runner.cli import view
from fusion_runner.core.outcome import ExitRecord

NOW = datetime(2024, 5, 1, 12, 0, 0)
SWEEP = json.dumps({"general_settings": {"erlang_start": 300, "erlang_step": 100}})


def run(status: str = "RUNNING", *, erlang: float | None = None, erlangs: int | None = None,
        iteration: int | None = None, iterations: int | None = None, started: float | None = 10.0,
        ended: float | None = None, name: str = "sweep", run_id: str = "0123456789ab",
        pid: int | None = 42) -> view.Snapshot:
    """A snapshot started `started` s before NOW and completed `ended` s before NOW."""
    return view.Snapshot(
        id=run_id, name=name, status=status, config_json=SWEEP, pid=pid,
        started_at=None if started is None else NOW - timedelta(seconds=started),
        completed_at=None if ended is None else NOW - timedelta(seconds=ended),
        current_erlang=erlang, total_erlangs=erlangs,
        current_iteration=iteration, total_iterations=iterations,
    )


def render(rows: list[view.Snapshot], width: int = 80) -> list[str]:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(view.runs_table(rows, NOW))
    return console.export_text().rstrip("\n").splitlines()


@pytest.mark.parametrize(
    ("erlang", "iteration", "expected"),
    [
        (300.0, 1, 1 / 8),  # first Erlang of two, one of four iterations done
        (400.0, 2, 6 / 8),
        (300.0, 4, 0.0),  # i == M: maybe the last Erlang's, never counted ahead
        (400.0, 4, 4 / 8),
        (900.0, 1, 1.0),  # beyond the sweep: clamped
    ],
)
def test_fraction_done_from_the_erlang_position_in_the_sweep(
    erlang: float, iteration: int, expected: float
) -> None:
    row = run(erlang=erlang, erlangs=2, iteration=iteration, iterations=4)

    assert view.fraction_done(row) == pytest.approx(expected)


def test_fraction_done_is_unknown_without_totals_and_whole_when_completed() -> None:
    assert view.fraction_done(run(erlang=300.0, iteration=1)) is None
    assert view.fraction_done(run("PENDING", started=None)) is None
    assert view.fraction_done(run("COMPLETED", ended=0)) == 1.0
    no_sweep = dataclasses.replace(run(erlang=300.0, erlangs=2, iteration=1, iterations=4),
                                   config_json="{}")
    assert view.fraction_done(no_sweep) is None


def test_a_snapshot_never_goes_back_and_stays_below_100_percent_until_completed() -> None:
    ahead = view.Snapshot.of(run(erlang=400.0, erlangs=2, iteration=3, iterations=4))
    behind = view.Snapshot.of(run(erlang=300.0, erlangs=2, iteration=1, iterations=4), ahead)
    nearly = view.Snapshot.of(run(erlang=900.0, erlangs=2, iteration=1, iterations=4), behind)
    done = view.Snapshot.of(run("COMPLETED", erlang=400.0, erlangs=2, iteration=4,
                                iterations=4, ended=0), nearly)

    assert ahead.fraction == pytest.approx(7 / 8)
    assert behind.fraction == pytest.approx(7 / 8)
    assert nearly.fraction == view.UNFINISHED_AT_MOST
    assert done.fraction == 1.0


def test_remaining_time_at_the_pace_so_far_only_while_running() -> None:
    quarter = view.Snapshot.of(run(erlang=300.0, erlangs=1, iteration=1, iterations=4,
                                   started=30.0))
    failed = view.Snapshot.of(run("FAILED", erlang=300.0, erlangs=1, iteration=1,
                                  iterations=4, ended=5.0))

    assert view.remaining_seconds(quarter, NOW) == pytest.approx(90.0)
    assert view.remaining_seconds(failed, NOW) is None
    assert view.elapsed_seconds(failed, NOW) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.04, "0.0s"), (4.25, "4.2s"), (59.9, "59.9s"), (65, "1m05s"),
     (3599, "59m59s"), (7620, "2h07m")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert view.duration(seconds) == text


def test_has_ended_needs_a_final_status_and_no_process_left() -> None:
    assert not view.has_ended(run("RUNNING"))
    assert not view.has_ended(run("CANCELLED"))  # still being stopped
    assert view.has_ended(run("CANCELLED", ended=0))
    assert view.has_ended(run("CANCELLED", pid=None, started=None))  # cancelled while queued
    assert view.has_ended(run("COMPLETED", ended=0))
    assert view.has_ended(run().deleted())


def test_the_table_has_a_header_and_one_line_per_run_within_80_columns() -> None:
    rows = [
        view.Snapshot.of(run(erlang=400.0, erlangs=2, iteration=2, iterations=4,
                             run_id="aaaaaaaaaaaa", name="x" * 60)),
        view.Snapshot.of(run("COMPLETED", erlang=400.0, erlangs=2, iteration=4, iterations=4,
                             ended=1.0, run_id="bbbbbbbbbbbb")),
        view.Snapshot.of(run("PENDING", started=None, run_id="cccccccccccc")),
    ]

    lines = render(rows)

    assert lines[0].split() == ["ID", "NAME", "STATUS", "ERL", "ITER", "DONE", "TIME", "LEFT"]
    assert len(lines) == 4
    assert all(len(line) <= 80 for line in lines)
    running, completed, pending = lines[1:]
    assert running.startswith("aaaaaaaaaaaa xxx") and "…" in running
    assert "RUNNING" in running and " 2/2 " in running and " 2/4 " in running
    assert "75%" in running and "~3.3s" in running  # 10 s for 6/8: 3.3 s left
    assert "COMPLETED" in completed and "100%" in completed and "9.0s" in completed
    # The bar: full for the completed run, part for the running one, empty while pending.
    bar = "━"
    assert completed.count(bar) > running.count(bar) > 0
    assert bar not in pending and "PENDING" in pending


def test_the_table_shrinks_to_a_narrow_terminal_and_grows_on_a_wide_one() -> None:
    row = view.Snapshot.of(run(erlang=300.0, erlangs=2, iteration=1, iterations=4))

    narrow, wide = render([row], width=60), render([row], width=160)

    assert all(len(line) <= 60 for line in narrow)
    assert max(len(line) for line in wide) > 80


def test_summary_line_for_output_that_is_not_a_terminal() -> None:
    row = view.Snapshot.of(run(erlang=400.0, erlangs=2, iteration=2, iterations=4,
                               name="a-rather-long-run-name"))

    line = view.summary_line(row, NOW)

    assert line.split() == ["0123456789ab", "a-rather-long…", "RUNNING", "E", "2/2", "it",
                            "2/4", "75%", "10.0s"]
    assert len(line) <= 80


# --- ls: CPU time, peak memory, queue place -----------------------------------------------

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (None, "-"),
        (0, "0B"),
        (1023, "1023B"),
        (KIB, "1.0K"),
        (900 * KIB, "900K"),
        (int(9.5 * MIB), "9.5M"),
        (int(9.96 * MIB), "10M"),  # would round up to 10.0M: six characters
        (512 * MIB, "512M"),
        (1023 * MIB, "1023M"),
        (GIB - 1, "1.0G"),  # 1024M would be the next unit's
        (int(1.25 * GIB), "1.2G"),
        (5 << 40, "5.0T"),
        (3 << 50, "3.0P"),
    ],
)
def test_memory_is_shown_1024_based_in_at_most_5_characters(
    size: int | None, expected: str
) -> None:
    assert view.memory_text(size) == expected
    assert len(expected) <= 5


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(None, "-"), (0.0, "0.0s"), (0.03, "<0.1s"), (0.06, "0.1s"), (12.34, "12.3s"),
     (185.0, "3m05s"), (3725.0, "1h02m")],
)
def test_cpu_time_reads_as_the_other_durations(seconds: float | None, expected: str) -> None:
    assert view.cpu_text(seconds) == expected


def test_queue_place_is_numbered_from_the_run_started_next() -> None:
    assert [view.queue_text(place) for place in (1, 12, None)] == ["#1", "#12", "-"]


def test_usage_comes_from_the_exit_record_in_seconds_and_bytes() -> None:
    ended = ExitRecord(exit_code=0, signal=None, spawn_error=None, cpu_seconds=1.5,
                       max_rss_kib=2048)
    never_started = ExitRecord(exit_code=None, signal=None, spawn_error="No such file")

    assert view.usage_of(ended) == (1.5, 2 * MIB)
    assert view.usage_of(never_started) == (None, None)  # nothing was measured
    assert view.usage_of(None) == (None, None)
