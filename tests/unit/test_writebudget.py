"""The progress write budget on a fake clock: rare lines at once, a stream merged."""

from __future__ import annotations

import pytest

from fusion_runner.daemon.writebudget import BURST, WriteBudget

INTERVAL = 0.05


def write_if_ready(budget: WriteBudget, now: float) -> bool:
    if budget.ready_at(now, INTERVAL) > now:
        return False
    budget.spend(now, INTERVAL)
    return True


def test_a_lone_line_and_a_few_close_ones_are_written_at_once() -> None:
    budget = WriteBudget()
    assert write_if_ready(budget, 10.0)
    assert write_if_ready(budget, 10.003)  # a few milliseconds later: no wait
    assert write_if_ready(budget, 10.005)


def test_lines_faster_than_the_interval_wait_for_the_next_token_only() -> None:
    budget = WriteBudget()
    for n in range(BURST):
        assert write_if_ready(budget, 10.0 + n * 0.001)
    now = 10.0 + BURST * 0.001
    ready = budget.ready_at(now, INTERVAL)

    assert now < ready <= now + INTERVAL
    assert not write_if_ready(budget, ready - 0.001)
    assert write_if_ready(budget, ready)


def test_a_stream_of_a_thousand_lines_a_second_is_merged_into_one_write_per_interval() -> None:
    budget = WriteBudget()
    writes = sum(write_if_ready(budget, 10.0 + ms / 1000) for ms in range(10_000))

    seconds = 10.0
    assert writes <= BURST + seconds / INTERVAL + 1
    assert writes >= seconds / INTERVAL  # and never starved


def test_a_long_pause_refills_the_burst_and_no_more() -> None:
    budget = WriteBudget()
    for n in range(BURST):
        write_if_ready(budget, 10.0 + n * 0.001)
    later = 1000.0
    written = [write_if_ready(budget, later + n * 0.001) for n in range(BURST + 1)]

    assert written == [True] * BURST + [False]


def test_a_write_made_whatever_the_budget_leaves_it_empty_not_in_debt() -> None:
    budget = WriteBudget()
    for _ in range(BURST + 5):
        budget.spend(10.0, INTERVAL)

    assert budget.ready_at(10.0, INTERVAL) == pytest.approx(10.0 + INTERVAL)


def test_no_interval_never_defers() -> None:
    budget = WriteBudget()
    for n in range(100):
        assert budget.ready_at(10.0 + n * 1e-6, 0.0) == 10.0 + n * 1e-6
        budget.spend(10.0 + n * 1e-6, 0.0)
