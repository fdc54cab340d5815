"""`Supervisor.step()` through the tricky histories, with a fake executor and clock
on a real SQLite file: no process, thread or sleep, so each test takes milliseconds."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fusion_runner.core.config import Config
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store
from fusion_runner.daemon.liverun import Phase
from fusion_runner.daemon.supervisor import Supervisor
from tests.fakes import FakeClock, FakeExecutor, FakeRun, FakeWakeups

WORKER = "unit"
RUN = "0123456789ab"
GRACE = 5.0


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(database_url=f"sqlite:///{tmp_path / 'runs.db'}", runs_dir=tmp_path / "runs",
                  worker_id=WORKER, stop_grace_seconds=GRACE, sim_command=("true",))


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    store = Store.open(config.database_url)
    yield store
    store.close()


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor()


def supervisor(config: Config, store: Store, executor: FakeExecutor) -> Supervisor:
    return Supervisor(config, store, executor, FakeWakeups(), FakeClock())


def submit(store: Store, run_id: str = RUN) -> None:
    store.insert_run(run_id, name="x", config_json='{"sim": {}}', template="t.ini")


def client(config: Config, sql: str) -> None:
    """A write by another process (the GUI)."""
    database = config.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.execute(sql, (RUN,))


def status(store: Store, run_id: str = RUN) -> tuple[str, bool] | None:
    row = store.get_run(run_id)
    return None if row is None else (row.status, row.completed_at is not None)


def started(config: Config, store: Store, executor: FakeExecutor) -> tuple[Supervisor, FakeRun]:
    submit(store)
    daemon = supervisor(config, store, executor)
    daemon.step(0.0)
    return daemon, executor.run_of(RUN)


def test_a_run_is_spawned_recorded_and_completed(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    assert store.get_run(RUN).pid == run.pid  # type: ignore[union-attr]

    run.end(0)
    daemon.step(1.0)

    assert status(store) == (RunStatus.COMPLETED, True)
    assert daemon.live == {} and executor.released == [RUN]


def test_cancel_noticed_in_the_pass_the_run_exits_wins(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    run.end(0)
    client(config, "UPDATE runs SET status = 'CANCELLED' WHERE id = ?")

    daemon.step(1.0)

    assert status(store) == (RunStatus.CANCELLED, True)
    assert run.signals == []  # it had ended already: nothing to signal


def test_cancel_unnoticed_before_the_final_write_still_wins(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    run.end(0)
    client(config, "UPDATE runs SET status = 'CANCELLED' WHERE id = ?")

    daemon.step(1.0, database_changed=False)  # the final write is refused: the client won

    assert status(store) == (RunStatus.CANCELLED, True)


def test_a_run_that_ignores_term_is_killed_after_the_grace(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    run.ignores_term = True
    client(config, "UPDATE runs SET status = 'CANCELLED' WHERE id = ?")

    daemon.step(1.0)
    assert run.signals == ["TERM"] and daemon.live[RUN].phase is Phase.STOPPING
    daemon.step(1.0 + GRACE - 0.01)
    assert run.signals == ["TERM"]
    daemon.step(1.0 + GRACE)
    assert run.signals == ["TERM", "KILL"]
    daemon.step(1.0 + GRACE + 0.01)

    assert status(store) == (RunStatus.CANCELLED, True)
    assert daemon.live == {}


def test_leftovers_of_an_exited_stopped_run_are_killed_after_the_grace(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    run.leftovers = True
    client(config, "UPDATE runs SET status = 'CANCELLED' WHERE id = ?")

    daemon.step(1.0)  # TERM ends the leader, not what it left
    daemon.step(1.1)  # the leader is reaped; the rest keeps it from being finalised
    assert daemon.live[RUN].phase is Phase.EXITED_KILL_DUE
    daemon.step(1.0 + GRACE)
    daemon.step(1.0 + GRACE + 0.01)

    assert run.signals == ["TERM", "KILL"]
    assert status(store) == (RunStatus.CANCELLED, True)


def earlier_daemon_started(store: Store, executor: FakeExecutor, config: Config) -> FakeRun:
    submit(store)
    assert store.claim_next(WORKER) is not None
    run = executor.earlier_daemon_spawned(RUN)
    store.mark_started(RUN, pid=run.pid, pgid=run.pgid, process_start_ticks=run.pid * 10,
                       boot_id="boot", process_start_time=None,
                       run_dir=config.runs_dir / RUN)
    return run


def test_a_live_run_is_adopted_and_finalised_when_it_ends(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    run = earlier_daemon_started(store, executor, config)
    daemon = supervisor(config, store, executor)

    daemon.reconcile(0.0)
    assert daemon.live[RUN].phase is Phase.RUNNING and daemon.live[RUN].adopted
    run.end(3)
    daemon.step(1.0)

    row = store.get_run(RUN)
    assert row is not None and row.status == RunStatus.FAILED
    assert "3" in (row.error_message or "")


def test_an_ended_run_is_adopted_with_its_recorded_outcome(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    earlier_daemon_started(store, executor, config).end(0)
    daemon = supervisor(config, store, executor)

    daemon.reconcile(0.0)
    assert daemon.live[RUN].phase is Phase.EXITED
    daemon.step(1.0)

    assert status(store) == (RunStatus.COMPLETED, True)


def test_an_ended_run_without_a_record_fails_as_unrecoverable(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    earlier_daemon_started(store, executor, config).end(None)
    daemon = supervisor(config, store, executor)

    daemon.reconcile(0.0)
    daemon.step(1.0)

    row = store.get_run(RUN)
    assert row is not None and row.status == RunStatus.FAILED
    assert row.error_message == "exit status could not be recovered"


def test_a_run_deleted_while_running_is_stopped_and_forgotten(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    client(config, "DELETE FROM runs WHERE id = ?")

    daemon.step(1.0)
    daemon.step(1.1)

    assert run.signals == ["TERM"] and not run.alive
    assert status(store) is None and daemon.live == {}


def test_shutdown_detach_leaves_runs_running(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(config, store, executor)
    submit(store, "0123456789ac")

    daemon.stop()
    daemon.step(1.0)

    assert run.signals == [] and run.alive
    assert status(store) == (RunStatus.RUNNING, False)
    assert status(store, "0123456789ac") == (RunStatus.PENDING, False)  # not claimed
    assert daemon._finished()


def test_shutdown_terminate_stops_runs_and_fails_them(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    daemon, run = started(replace(config, on_shutdown="terminate"), store, executor)

    daemon.stop()
    daemon.step(1.0)
    assert not daemon._finished()  # the loop waits for the run's end
    daemon.step(1.1)

    assert run.signals == ["TERM"]
    row = store.get_run(RUN)
    assert row is not None and row.status == RunStatus.FAILED
    assert row.error_message == "runner shut down"
    assert daemon._finished()


def test_a_run_claimed_by_another_daemon_is_not_started(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    submit(store)
    other = Store.open(config.database_url)
    try:
        assert other.claim_next("other-worker") is not None
    finally:
        other.close()
    daemon = supervisor(config, store, executor)

    daemon.step(0.0)

    assert executor.world == {} and daemon.live == {}
    assert store.owned_unfinished(WORKER) == []
    assert status(store) == (RunStatus.RUNNING, False)


def test_progress_no_wake_up_announced_is_read_every_progress_poll_seconds(
    config: Config, store: Store, executor: FakeExecutor
) -> None:
    """Writes inotify cannot see (another node of a shared file system) reach the row
    within progress_poll_seconds."""
    config = replace(config, progress_poll_seconds=3.0)
    daemon, _run = started(config, store, executor)
    daemon.step(0.5)  # the sweep of the first pass is behind us
    progress = daemon.live[RUN].paths.progress_file
    progress.write_text('{"erlang": 300.0, "iteration": 2, "total_iterations": 5}\n')

    daemon.step(2.9)  # no wake-up for the file, and the sweep is not due
    assert store.get_run(RUN).current_iteration is None  # type: ignore[union-attr]
    daemon.step(3.1)

    assert store.get_run(RUN).current_iteration == 2  # type: ignore[union-attr]
