"""Fakes for driving `Supervisor.step()` without processes, threads or sleeping:
an executor whose runs end when a test says so, a clock, and a wake-up source."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fusion_runner.core import outcome
from fusion_runner.core.config import Config
from fusion_runner.core.rundir import RunPaths
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import OwnedRun
from fusion_runner.daemon.wakeups import Wakeup
from fusion_runner.executors import base
from fusion_runner.executors.base import EndedUnrecorded, RunHandle, Verdict

SIGTERM_STATUS, SIGKILL_STATUS = 15, 9  # wait statuses of a process ended by that signal


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeRun:
    """One run's processes in the fake world."""

    pid: int
    run_id: str
    alive: bool = True
    leftovers: bool = False  # members of its tree still alive after the leader ended
    ignores_term: bool = False
    wait_status: int | None = None  # once ended: what waitpid would say
    exit_code: int | None = None  # what its exit record says; None: no record
    reaped: bool = False
    signals: list[str] = field(default_factory=list)

    @property
    def pgid(self) -> int:
        return self.pid

    def end(self, exit_code: int | None = 0, wait_status: int | None = None) -> None:
        self.alive, self.exit_code = False, exit_code
        self.wait_status = (exit_code or 0) << 8 if wait_status is None else wait_status


@dataclass(frozen=True)
class FakeSight:
    verdict: Verdict
    why: str = ""


class FakeExecutor:
    """Implements `executors.base.Executor` over `FakeRun`s, keyed by pid."""

    queues: bool = False
    poll_seconds: float | None = None

    def __init__(self) -> None:
        self.world: dict[int, FakeRun] = {}
        self.released: list[str] = []
        self._pids = itertools.count(4000)

    def run_of(self, run_id: str) -> FakeRun:
        return next(run for run in self.world.values() if run.run_id == run_id)

    def earlier_daemon_spawned(self, run_id: str) -> FakeRun:
        """A run's processes as an earlier daemon left them (for adoption)."""
        run = FakeRun(next(self._pids), run_id)
        self.world[run.pid] = run
        return run

    def become_reaper(self) -> None: ...

    def spawn(self, paths: RunPaths, argv: list[str], env: dict[str, str]) -> FakeRun:
        return self.earlier_daemon_spawned(paths.run_dir.name)

    def identity(self, handle: RunHandle) -> base.Identity:
        return base.Identity(handle.pid, handle.pgid, handle.pid * 10, "boot", None)

    def from_row(self, owned: OwnedRun) -> FakeRun | None:
        if owned.pid is None:
            return None
        return self.world.get(owned.pid) or FakeRun(owned.pid, owned.id, alive=False)

    def look(self, handle: RunHandle) -> FakeSight:
        return FakeSight(Verdict.ALIVE if _fake(handle).alive else Verdict.GONE)

    def upgrade_identity(self, handle: RunHandle) -> base.Identity | None:
        return None

    def note_ended_unwatched(self, handle: RunHandle, verdict: Verdict) -> None: ...

    def find_unrecorded(self, run_id: str) -> FakeRun | None:
        return None

    def left_a_trace(self, paths: RunPaths) -> bool:
        return False

    def may_hide(self, paths: RunPaths) -> str | None:
        return None

    def terminate(self, handle: RunHandle) -> None:
        run = _fake(handle)
        run.signals.append("TERM")
        if run.alive and not run.ignores_term:
            run.end(None, SIGTERM_STATUS)

    def kill(self, handle: RunHandle) -> None:
        run = _fake(handle)
        run.signals.append("KILL")
        run.leftovers = False
        if run.alive:
            run.end(None, SIGKILL_STATUS)

    def is_alive(self, handle: RunHandle) -> bool:
        return _fake(handle).alive

    def tree_gone(self, handle: RunHandle) -> bool:
        run = _fake(handle)
        return not run.alive and not run.leftovers

    def reap(self, children: list[RunHandle]) -> list[tuple[RunHandle, int | None]]:
        ended: list[tuple[RunHandle, int | None]] = []
        for run in map(_fake, children):
            if not run.alive and not run.reaped and run.wait_status is not None:
                run.reaped = True
                ended.append((run, run.wait_status))
        return ended

    def queue_name(self, handle: RunHandle) -> str | None:
        return None

    def queue_reason(self, handle: RunHandle) -> str | None:
        return None

    def requeued(self, handle: RunHandle) -> bool:
        return False

    def outcome(self, handle: RunHandle, paths: RunPaths, wait_status: int | None,
                last_error: str | None, *, watched: bool) -> outcome.Outcome:
        run = _fake(handle)
        record = None if run.exit_code is None else outcome.ExitRecord(run.exit_code, None, None)
        if record is None and not watched:
            return outcome.Outcome(RunStatus.FAILED, "exit status could not be recovered")
        return outcome.decide(record, wait_status, last_error, "")

    def outcome_unrecorded(self, paths: RunPaths, last_error: str | None) -> EndedUnrecorded:
        return EndedUnrecorded(outcome.Outcome(RunStatus.FAILED, "no exit record"), None, None)

    def end_watch_pid(self, handle: RunHandle) -> int | None:
        return handle.pid

    def release(self, handle: RunHandle) -> None:
        self.released.append(_fake(handle).run_id)

    def reconfigure(self, config: Config) -> None: ...


def _fake(handle: RunHandle) -> FakeRun:
    assert isinstance(handle, FakeRun)
    return handle


class FakeWakeups:
    """A wake-up source that returns what a test queued and records what was watched."""

    def __init__(self) -> None:
        self.queued: list[Wakeup] = []
        self.watched: set[str] = set()
        self.exits: dict[str, int] = {}
        self.closed = False

    def wait(self, timeout: float) -> list[Wakeup]:
        woken, self.queued = self.queued, []
        return woken

    def put(self, wakeup: Wakeup) -> None: ...
    def catch_stop_signals(self, on_stop: Callable[[], None]) -> None: ...
    def watch_database(self, database_file: Path) -> None: ...
    def rearm_database(self) -> None: ...

    def watch_exit(self, key: str, pid: int) -> None:
        self.exits[key] = pid

    def watch_progress(self, run_id: str, progress_file: Path) -> None:
        self.watched.add(run_id)

    def watch_log(self, run_id: str, log_file: Path) -> None: ...
    def rearm_progress(self, run_id: str) -> None: ...

    def unwatch_progress(self, run_id: str) -> None:
        self.watched.discard(run_id)

    def unwatch_log(self, run_id: str) -> None: ...

    def close(self) -> None:
        self.closed = True
