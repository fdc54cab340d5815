"""A run's history and stalls through `Supervisor.step()`, with the fake executor and
clock of tests/fakes.py on a real SQLite file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fusion_runner.core.config import Config
from fusion_runner.core.schema import claims
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store
from fusion_runner.daemon.supervisor import Supervisor
from tests.fakes import FakeClock, FakeExecutor, FakeRun, FakeWakeups

WORKER = "unit"
RUN = "0123456789ab"
GRACE = 5.0


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(database_url=f"sqlite:///{tmp_path / 'runs.db'}", runs_dir=tmp_path / "runs",
                  worker_id=WORKER, stop_grace_seconds=GRACE, sim_command=("true",),
                  progress_source="file")


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    store = Store.open(config.database_url)
    yield store
    store.close()


def started(config: Config, store: Store) -> tuple[Supervisor, FakeRun, FakeExecutor]:
    executor = FakeExecutor()
    store.insert_run(RUN, name="x", config_json='{"sim": {}}', template="t.ini")
    daemon = Supervisor(config, store, executor, FakeWakeups(), FakeClock())
    daemon.step(0.0)
    return daemon, executor.run_of(RUN), executor


def events(store: Store) -> list[str]:
    return [event["event"] for event in store.history(RUN)]


def details(store: Store) -> dict[str, Any]:
    return {event["event"]: event["detail"] for event in store.history(RUN)}


def progress(config: Config, **record: float) -> None:
    with open(config.runs_dir / RUN / "progress.jsonl", "a") as file:
        file.write(json.dumps(record) + "\n")


def stalled_at(store: Store) -> object:
    with store.engine.connect() as conn:
        return conn.execute(select(claims.c.stalled_at)
                            .where(claims.c.run_id == RUN)).scalar_one()


# --- history ----------------------------------------------------------------------


def test_a_completed_run_s_history(config: Config, store: Store) -> None:
    daemon, run, _ = started(config, store)
    run.end(0)
    daemon.step(1.0)

    assert events(store) == ["claimed", "started", "exited", "final"]
    history = store.history(RUN)
    assert {event["worker_id"] for event in history} == {WORKER}
    assert [event["at"] for event in history] == sorted(event["at"] for event in history)
    assert details(store)["started"] == f"pid={run.pid}"
    assert details(store)["exited"] == "exit code 0"
    assert details(store)["final"] == "COMPLETED"


def test_a_cancelled_run_that_ignores_term_lists_the_signals_in_order(
    config: Config, store: Store
) -> None:
    daemon, run, _ = started(config, store)
    run.ignores_term = True
    store.cancel(RUN)
    daemon.step(1.0)
    daemon.step(1.0 + GRACE)  # KILL
    daemon.step(1.0 + GRACE + 0.1)

    assert events(store) == ["claimed", "started", "cancel_seen", "sigterm", "sigkill",
                             "exited", "final"]
    assert details(store)["cancel_seen"] == "status=CANCELLED"
    assert details(store)["exited"] == "signal SIGKILL"
    assert details(store)["final"].startswith("CANCELLED")


def test_a_failed_run_s_final_event_has_the_message_s_first_line(
    config: Config, store: Store
) -> None:
    daemon, run, _ = started(config, store)
    run.end(3)
    daemon.step(1.0)
    assert details(store)["final"].startswith("FAILED: exit code 3")


def test_history_waits_in_memory_while_the_database_refuses_it(
    config: Config, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, run, _ = started(config, store)
    real = store.add_events

    def refuse(rows: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "add_events", refuse)
    run.end(0)
    with pytest.raises(OperationalError):
        daemon.step(1.0)  # as the loop sees it: a failed pass, tried again
    assert store.get_run(RUN).status == RunStatus.COMPLETED  # type: ignore[union-attr]
    assert events(store) == ["claimed", "started"]  # the first pass's

    monkeypatch.setattr(store, "add_events", real)
    daemon.step(2.0)
    assert events(store) == ["claimed", "started", "exited", "final"]


def test_nothing_is_recorded_per_progress_line(config: Config, store: Store) -> None:
    daemon, _run, _ = started(config, store)
    for n in range(1, 20):
        progress(config, erlang=100.0, iteration=n, total_iterations=20)
        daemon.step(n * 1.0)
    assert events(store) == ["claimed", "started"]


# --- stalls -------------------------------------------------------------------------


def test_a_run_whose_progress_stops_is_marked_once_and_unmarked_when_it_moves(
    config: Config, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(config, stall_after_seconds=3.0)
    daemon, run, _ = started(config, store)
    progress(config, erlang=100.0, iteration=1, total_iterations=5)
    caplog.set_level(logging.INFO, logger="fusion_runner")
    daemon.step(0.5)
    daemon.step(2.0)
    assert stalled_at(store) is None and daemon._next_deadline is not None

    daemon.step(3.6)
    daemon.step(5.0)
    daemon.step(9.0)
    assert stalled_at(store) is not None
    assert events(store).count("stalled") == 1
    assert details(store)["stalled"] == "no progress for 3 s"
    assert caplog.text.count(f"run={RUN} action=stalled after=3s") == 1
    assert run.signals == []  # on_stall = "warn"

    progress(config, erlang=100.0, iteration=2, total_iterations=5)
    daemon.step(10.0)
    assert stalled_at(store) is None
    assert events(store)[-1] == "unstalled"
    assert f"run={RUN} action=unstalled" in caplog.text


def test_the_same_progress_again_is_no_move(config: Config, store: Store) -> None:
    config = replace(config, stall_after_seconds=2.0)
    daemon, _, _ = started(config, store)
    for moment in (1.0, 2.0, 3.0, 4.0):  # read at each sweep (progress_poll_seconds)
        progress(config, erlang=100.0, iteration=1, total_iterations=5)
        daemon.step(moment)
    assert "stalled" in events(store)


def test_on_stall_cancel_stops_the_run_and_it_ends_failed(config: Config, store: Store) -> None:
    config = replace(config, stall_after_seconds=2.0, on_stall="cancel")
    daemon, run, _ = started(config, store)
    progress(config, erlang=100.0, iteration=1, total_iterations=5)
    daemon.step(1.0)  # read at the sweep
    daemon.step(3.5)  # stalled: TERM, which ends the fake run
    daemon.step(3.6)

    row = store.get_run(RUN)
    assert row is not None and row.status == RunStatus.FAILED
    assert row.error_message == "stalled: no progress for 2 s"
    assert run.signals == ["TERM"] and daemon.live == {}
    assert events(store) == ["claimed", "started", "stalled", "sigterm", "exited", "final"]
    assert details(store)["sigterm"].startswith("reason=stalled")


def test_a_client_s_cancel_of_a_run_stopped_for_a_stall_wins(
    config: Config, store: Store
) -> None:
    config = replace(config, stall_after_seconds=2.0, on_stall="cancel")
    daemon, run, _ = started(config, store)
    run.ignores_term = True
    progress(config, erlang=100.0, iteration=1, total_iterations=5)
    daemon.step(1.0)
    daemon.step(3.5)
    store.cancel(RUN)
    daemon.step(3.5 + GRACE)
    daemon.step(3.5 + GRACE + 0.1)
    assert store.get_run(RUN).status == RunStatus.CANCELLED  # type: ignore[union-attr]


def test_a_run_that_never_writes_progress_is_never_marked(
    config: Config, store: Store
) -> None:
    config = replace(config, stall_after_seconds=1.0, on_stall="cancel")
    daemon, run, _ = started(config, store)
    for moment in range(1, 30):
        daemon.step(float(moment))
    assert stalled_at(store) is None and run.signals == []
    assert "stalled" not in events(store)


def test_stalls_are_off_by_default(config: Config, store: Store) -> None:
    daemon, _run, _ = started(config, store)
    progress(config, erlang=100.0, iteration=1, total_iterations=5)
    for moment in (0.5, 100.0, 10_000.0):
        daemon.step(moment)
    assert stalled_at(store) is None and "stalled" not in events(store)
