"""LocalExecutor: each run is a shim on this machine (see shim.py), the one place
that knows the shim, its exit record, the spawn marker, the status pipe and the log."""

from __future__ import annotations

import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from fusion_runner.core import exitrecord, outcome, sharing
from fusion_runner.core.config import Config
from fusion_runner.core.rundir import RunPaths
from fusion_runner.core.status import RunStatus
from fusion_runner.core.store import OwnedRun
from fusion_runner.executors import base, procfs, shim
from fusion_runner.executors.base import EndedUnrecorded, RunHandle, Verdict
from fusion_runner.executors.identity import Identity, Sight
from fusion_runner.executors.processtree import (
    RunProcess,
    close_status_pipe,
    find_shim,
    piped_record,
    reap,
    signal_tree,
    tree_gone,
)

__all__ = ["Identity", "LocalExecutor", "RunProcess", "Sight", "Verdict", "find_shim",
           "spawn", "tree_gone"]

SHIM_PATH = str(Path(shim.__file__).resolve())
# Python ignores these; a child must start with the default action.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
# The shim's end of its status pipe, in the shim.
SHIM_STATUS_FD = 3


def spawn(
    paths: RunPaths, argv: list[str], env: dict[str, str], grace: float, file_mode: int = 0o640
) -> RunProcess:
    """Start the run's shim in a new session; raises OSError if it cannot start.

    The log and the spawn marker get `file_mode` (less what the umask masks).

    The spawn marker is written first, so that a daemon that dies at any
    moment after it never takes the run for one that was never started.
    """
    shim_argv = [
        sys.executable, "-I", "-S", SHIM_PATH,
        "--run-dir", str(paths.run_dir),
        "--record", str(paths.exit_record),
        "--grace", repr(grace),
        "--status-fd", str(SHIM_STATUS_FD),
        "--", *argv,
    ]
    read_fd, write_fd = _status_pipe()
    log_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    file_actions = [
        (os.POSIX_SPAWN_DUP2, write_fd, SHIM_STATUS_FD),  # dup2 clears close-on-exec
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(paths.log_file), log_flags, file_mode),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        _write_spawn_marker(paths.spawn_marker, file_mode)
        pid = os.posix_spawn(
            sys.executable, shim_argv, env,
            file_actions=file_actions, setsid=True, setsigdef=_RESTORED_SIGNALS,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    # An unreaped child's pid cannot be reused, so this read is race-free.
    return RunProcess(shim=Identity.read(pid), pgid=pid, status_fd=read_fd)


def _status_pipe() -> tuple[int, int]:
    """A pipe whose write end is not SHIM_STATUS_FD itself (dup2 onto itself keeps
    close-on-exec set) and whose read end never blocks the loop."""
    read_fd, write_fd = os.pipe()
    if write_fd == SHIM_STATUS_FD:
        moved = os.dup(write_fd)
        os.close(write_fd)
        write_fd = moved
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


def _write_spawn_marker(path: Path, mode: int) -> None:
    # No fsync: the marker only has to outlive the daemon, not the machine.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(path, flags, mode))

def left_a_trace(paths: RunPaths) -> bool:
    """Whether a spawn of this run may have happened: anything a spawn leaves behind."""
    traces = (paths.spawn_marker, paths.exit_record, paths.log_file, paths.progress_file)
    return any(path.exists() for path in traces)


class LocalExecutor:
    """Runs each simulation under a shim, as a child of this daemon (implements
    `executors.base.Executor`)."""

    queues: bool = False  # a spawned run has started
    poll_seconds: float | None = None  # a run's end wakes the loop (pidfd on its shim)

    def __init__(self, grace: float, file_mode: int = 0o640, *, subreaper: bool = True) -> None:
        self.grace, self.file_mode = grace, file_mode
        self._subreaper = subreaper
        # As a subreaper every exited child is reaped, orphans of our runs included.
        self._reap_any_child = False

    @classmethod
    def from_config(cls, config: Config, *, subreaper: bool = True) -> LocalExecutor:
        modes = sharing.modes_for(config.group_write)
        return cls(config.stop_grace_seconds, modes.file, subreaper=subreaper)

    def reconfigure(self, config: Config) -> None:
        self.grace = config.stop_grace_seconds

    def become_reaper(self) -> None:
        self._reap_any_child = self._subreaper and shim.set_child_subreaper()

    def spawn(self, paths: RunPaths, argv: list[str], env: dict[str, str]) -> RunProcess:
        return spawn(paths, argv, env, self.grace, file_mode=self.file_mode)

    def identity(self, handle: RunHandle) -> base.Identity:
        run = _local(handle)
        leader = run.shim
        return base.Identity(leader.pid, run.pgid, leader.start_ticks, leader.boot_id,
                             leader.start_time)

    def from_row(self, owned: OwnedRun) -> RunProcess | None:
        if owned.pid is None or owned.pgid is None:
            return None
        if owned.process_start_ticks is None and owned.process_start_time is None:
            return None
        leader = Identity(owned.pid, owned.process_start_ticks, owned.boot_id,
                          owned.process_start_time)
        return RunProcess(leader, owned.pgid)

    def look(self, handle: RunHandle) -> Sight:
        return _local(handle).shim.look()

    def upgrade_identity(self, handle: RunHandle) -> base.Identity | None:
        """An earlier version recorded a wall-clock start alone: once adopted, the
        run's identity stops depending on the clock, in memory and in its row."""
        run = _local(handle)
        if run.shim.start_ticks is not None:
            return None
        sight = run.shim.look()
        if sight.verdict is not Verdict.ALIVE or sight.stat is None:
            return None
        run.shim = Identity(run.shim.pid, sight.stat.start_ticks, procfs.boot_id(),
                            run.shim.start_time)
        return self.identity(run)

    def note_ended_unwatched(self, handle: RunHandle, verdict: Verdict) -> None:
        # A group of that number is still the run's only if the pid was neither
        # reused nor of another boot.
        run = _local(handle)
        run.owns_group = verdict is Verdict.GONE and run.shim.of_this_boot()

    def find_unrecorded(self, run_id: str) -> RunProcess | None:
        found = find_shim(run_id)
        return None if found is None else RunProcess(found, found.pid)

    def left_a_trace(self, paths: RunPaths) -> bool:
        return left_a_trace(paths)

    def may_hide(self, paths: RunPaths) -> str | None:
        if not left_a_trace(paths) or paths.exit_record.exists():
            return None  # never spawned, or its shim has ended
        return procfs.hidden_processes()

    def terminate(self, handle: RunHandle) -> None:
        signal_tree(_local(handle), signal.SIGTERM)

    def kill(self, handle: RunHandle) -> None:
        signal_tree(_local(handle), signal.SIGKILL)

    def is_alive(self, handle: RunHandle) -> bool:
        return _local(handle).shim.is_alive()

    def tree_gone(self, handle: RunHandle) -> bool:
        return tree_gone(_local(handle))

    def reap(self, children: list[RunHandle]) -> list[tuple[RunHandle, int | None]]:
        by_pid = {child.pid: child for child in children}
        statuses = reap(list(by_pid), any_child=self._reap_any_child)
        return [(by_pid[pid], status) for pid, status in statuses.items() if pid in by_pid]

    def queue_name(self, handle: RunHandle) -> str | None:
        return None

    def queue_reason(self, handle: RunHandle) -> str | None:
        return None

    def requeued(self, handle: RunHandle) -> bool:
        return False

    def outcome(self, handle: RunHandle, paths: RunPaths, wait_status: int | None,
                last_error: str | None, *, watched: bool) -> outcome.Outcome:
        record = _exit_record(_local(handle), paths)
        if record is None and not watched:
            return outcome.Outcome(RunStatus.FAILED, _unrecoverable(_local(handle), paths))
        return outcome.decide(record, wait_status, last_error,
                              exitrecord.log_tail(paths.log_file))

    def outcome_unrecorded(self, paths: RunPaths, last_error: str | None) -> EndedUnrecorded:
        record = exitrecord.read(paths.exit_record)
        started = _modified_at(paths.spawn_marker)
        if record is None:
            return EndedUnrecorded(outcome.Outcome(RunStatus.FAILED, (
                f"the runner stopped while starting this run and no exit record was left in "
                f"{paths.exit_record}; it is not started again, so that it never runs twice")),
                None, started)
        result = outcome.decide(record, None, last_error, exitrecord.log_tail(paths.log_file))
        return EndedUnrecorded(result, record.shim_pid, started)

    def end_watch_pid(self, handle: RunHandle) -> int | None:
        return handle.pid  # the shim: it outlives everything else of the run

    def release(self, handle: RunHandle) -> None:
        close_status_pipe(_local(handle))


def _local(handle: RunHandle) -> RunProcess:
    """The handle as this executor made it: a handle of another executor is a bug."""
    if not isinstance(handle, RunProcess):
        raise TypeError(f"not a local run: {handle!r}")
    return handle


def _exit_record(run: RunProcess, paths: RunPaths) -> outcome.ExitRecord | None:
    """The shim's record: from exit.json, else the copy it sent down its status pipe."""
    record = exitrecord.read(paths.exit_record)
    if record is not None:
        return record
    piped = piped_record(run)
    return None if piped is None else outcome.ExitRecord.from_json(piped)


def _unrecoverable(run: RunProcess, paths: RunPaths) -> str:
    """Why a run that ended unwatched has no outcome but FAILED."""
    if not run.shim.of_this_boot():
        reused = " (the machine has restarted since)"
    elif not run.owns_group:
        reused = " (its pid now belongs to another process)"
    else:
        reused = ""
    return (f"exit status could not be recovered: process {run.pid} ended while "
            f"no runner watched{reused} and left no exit record in {paths.exit_record}")


def _modified_at(path: Path) -> datetime | None:
    """A file's modification time as naive UTC, as the runs table stores times."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)
    except OSError:
        return None
