"""The main loop's timing decisions, with a fake clock and fake wake-ups on a real SQLite file."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from fusion_runner.core.config import Config
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import Store
from fusion_runner.daemon.dbwatch import SqliteWatch
from fusion_runner.daemon.supervisor import Supervisor
from fusion_runner.daemon.wakeups import Reason, Wakeup
from fusion_runner.executors.local import LocalExecutor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# A list of wake-ups to return, or a write to make before a database wake-up.
Step = list[Wakeup] | Callable[[], None]


class ScriptedWakeups:
    """Returns the scripted wake-ups in turn; time passes by each timeout waited."""

    def __init__(self, clock: FakeClock, script: list[Step], stop: Callable[[], None]):
        self.clock, self.script, self.stop = clock, script, stop
        self.timeouts: list[float] = []

    def wait(self, timeout: float) -> list[Wakeup]:
        self.timeouts.append(timeout)
        if not self.script:
            self.stop()
            return []
        step = self.script.pop(0)
        if callable(step):
            step()
            return [Wakeup(Reason.DATABASE)]
        woken = step
        if not woken:
            self.clock.now += timeout
        return woken

    def put(self, wakeup: Wakeup) -> None: ...
    def catch_stop_signals(self, on_stop: Callable[[], None]) -> None: ...
    def watch_database(self, database_file: Path) -> None: ...
    def watch_exit(self, key: str, pid: int) -> None: ...
    def watch_progress(self, run_id: str, progress_file: Path) -> None: ...
    def watch_log(self, run_id: str, log_file: Path) -> None: ...
    def unwatch_progress(self, run_id: str) -> None: ...
    def unwatch_log(self, run_id: str) -> None: ...
    def rearm_progress(self, run_id: str) -> None: ...
    def rearm_database(self) -> None: ...
    def close(self) -> None: ...


DATABASE_RECHECK_SECONDS = SqliteWatch.recheck_after


def run_loop(tmp_path: Path, script: list[Step], store: Store | None = None) -> list[float]:
    config = Config(database_url=f"sqlite:///{tmp_path / 'runs.db'}", runs_dir=tmp_path / "runs",
                    poll_interval_seconds=1.0, worker_id="unit")
    store = store or Store.open(config.database_url)
    clock = FakeClock()
    executor = LocalExecutor.from_config(config, subreaper=False)
    supervisor = Supervisor(config, store, executor, clock=clock)
    wakeups = ScriptedWakeups(clock, script, supervisor.stop)
    supervisor.wakeups = wakeups  # type: ignore[assignment]
    supervisor.run()
    store.close()
    return wakeups.timeouts


def test_idle_loop_waits_the_poll_interval(tmp_path: Path) -> None:
    timeouts = run_loop(tmp_path, [[], [], []])

    assert timeouts[:3] == [1.0, 1.0, 1.0]


def test_database_wakeup_is_rechecked_then_the_loop_rests(tmp_path: Path) -> None:
    timeouts = run_loop(tmp_path, [[Wakeup(Reason.DATABASE)], *[[]] * 6])

    delays = DATABASE_RECHECK_SECONDS
    steps = [delays[0]] + [later - earlier for earlier, later in itertools.pairwise(delays)]
    assert timeouts[1 : 1 + len(delays)] == pytest.approx(steps)
    # After the re-checks, back to the fallback poll: never a busy loop.
    assert timeouts[1 + len(delays) : 3 + len(delays)] == [1.0, 1.0]


def test_a_pending_recheck_survives_an_unrelated_wakeup(tmp_path: Path) -> None:
    script = [[Wakeup(Reason.DATABASE)], [Wakeup(Reason.PROGRESS, "x")], [], []]
    timeouts = run_loop(tmp_path, script)

    first = DATABASE_RECHECK_SECONDS[0]
    assert timeouts[1] == pytest.approx(first)
    assert timeouts[2] == pytest.approx(first)  # the clock did not move




def test_a_wakeup_after_our_own_write_is_not_rechecked_but_a_clients_is(
    tmp_path: Path,
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'runs.db'}")

    def own_write() -> None:  # a run the test inserts through the daemon's own store
        store.insert_run("0123456789ab", name="x", config_json="{}", template="t")
        store.transition("0123456789ab", RunStatus.PENDING, RunStatus.CANCELLED)

    def client_write() -> None:
        with sqlite3.connect(tmp_path / "runs.db") as connection:
            connection.execute("UPDATE runs SET name = 'y'")

    timeouts = run_loop(tmp_path, [own_write, [], client_write, [], []], store)

    assert timeouts[1] == 1.0  # our own commit: no re-checks
    assert timeouts[3] == pytest.approx(DATABASE_RECHECK_SECONDS[0])  # a client's: re-checked
