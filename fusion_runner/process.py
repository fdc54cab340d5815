"""Where a run executes: spawn its shim, know its processes, stop them.

This is the seam for other executors: the supervisor only calls `spawn`,
`signal_tree`, `tree_gone`, `reap`, `find_shim`, `left_a_trace` and the
status pipe's `piped_record` / `close_status_pipe`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fusion_runner import shim
from fusion_runner.rundir import RunPaths

SHIM_PATH = str(Path(shim.__file__).resolve())
# Python ignores these; a child must start with the default action.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
# The shim's end of its status pipe, in the shim.
SHIM_STATUS_FD = 3
MAX_RECORD_BYTES = 65536


@dataclass(frozen=True)
class Identity:
    """A process as it was when we saw it: a pid alone may be reused."""

    pid: int
    start_time: float

    def is_reused(self) -> bool:
        """The pid now belongs to another process (a different start time)."""
        try:
            return psutil.Process(self.pid).create_time() != self.start_time
        except psutil.Error:
            return False

    def is_alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return (
                process.create_time() == self.start_time
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


@dataclass
class RunProcess:
    """The shim of one run (session and group leader) and what we learnt of its tree."""

    shim: Identity
    pgid: int
    descendants: set[Identity] = field(default_factory=set)
    # False once the shim's pid is seen reused: its group is then a stranger's.
    owns_group: bool = True
    # Our end of the pipe down which the shim sends its exit record as it ends,
    # so the outcome survives an exit.json that cannot be written. None once
    # read, and for runs an earlier daemon started.
    status_fd: int | None = None
    piped: bytes = b""

    @property
    def pid(self) -> int:
        return self.shim.pid


def set_child_subreaper() -> bool:
    """Make orphans of our runs our children, so that we can reap them at once."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(shim.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def spawn(paths: RunPaths, argv: list[str], env: dict[str, str], grace: float) -> RunProcess:
    """Start the run's shim in a new session; raises OSError if it cannot start.

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
        (os.POSIX_SPAWN_OPEN, 1, str(paths.log_file), log_flags, 0o640),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        _write_spawn_marker(paths.spawn_marker)
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
    start_time = psutil.Process(pid).create_time()
    return RunProcess(shim=Identity(pid, start_time), pgid=pid, status_fd=read_fd)


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


def _write_spawn_marker(path: Path) -> None:
    # No fsync: the marker only has to outlive the daemon, not the machine.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(path, flags, 0o640))


def piped_record(run: RunProcess) -> str | None:
    """What the shim sent down its status pipe; None until the shim has ended."""
    if run.status_fd is not None:
        try:
            while chunk := os.read(run.status_fd, MAX_RECORD_BYTES):
                run.piped += chunk
        except BlockingIOError:
            return None  # the write end is still open: the shim has not ended
        close_status_pipe(run)
    return run.piped.decode(errors="replace") or None


def close_status_pipe(run: RunProcess) -> None:
    if run.status_fd is not None:
        os.close(run.status_fd)
        run.status_fd = None


def left_a_trace(paths: RunPaths) -> bool:
    """Whether a spawn of this run may have happened: anything a spawn leaves behind."""
    traces = (paths.spawn_marker, paths.exit_record, paths.log_file, paths.progress_file)
    return any(path.exists() for path in traces)


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                pids.extend(int(child) for child in listing.read().split())
    except OSError:
        pass  # gone meanwhile
    return pids


def _collect_descendants(run: RunProcess) -> None:
    """Remember the run's descendants outside its group: killpg does not reach them.

    Walks /proc/PID/task/TID/children from the shim down, which costs in
    proportion to the run's tree, not to every process on the machine.
    """
    if not run.shim.is_alive():
        return
    pending = _children(run.pid)
    while pending:
        pid = pending.pop()
        pending.extend(_children(pid))
        try:
            if os.getpgid(pid) != run.pgid:
                run.descendants.add(Identity(pid, psutil.Process(pid).create_time()))
        except (OSError, psutil.Error):
            continue


def _send(pid: int, signum: int, *, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass


def signal_tree(run: RunProcess, signum: int) -> None:
    """Signal the run's group, then every descendant that left it (setsid, double fork)."""
    # Checked before every signal: once the shim's pid is another process's,
    # a group of that number is no longer the run's.
    if run.owns_group and run.shim.is_reused():
        run.owns_group = False
    if run.owns_group:
        _send(run.pgid, signum, group=True)
    _collect_descendants(run)
    for process in list(run.descendants):
        if process.is_alive():
            _send(process.pid, signum, group=False)
        else:
            run.descendants.discard(process)


def _group_has_live_member(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds while zombies remain; only a live member counts.
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def tree_gone(run: RunProcess) -> bool:
    """True when no process of the run is left that is not a zombie."""
    if run.shim.is_alive() or (run.owns_group and _group_has_live_member(run.pgid)):
        return False
    return not any(process.is_alive() for process in run.descendants)


def reap(shim_pids: list[int], *, any_child: bool) -> dict[int, int]:
    """Wait statuses of exited children, by pid, without blocking.

    With `any_child` every exited child is reaped, orphans re-parented to us as
    a subreaper included, in one sweep: reaping shims and orphans separately
    could reap a shim in the orphan sweep and lose its status.
    """
    statuses: dict[int, int] = {}
    for pid in [-1] if any_child else shim_pids:
        while True:
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped == 0:
                break
            statuses[reaped] = status
    return statuses



def find_shim(run_id: str) -> Identity | None:
    """The live shim of a run whose spawn was never recorded: a session leader
    whose environment names the run (the simulation below it is no leader)."""
    for candidate in psutil.process_iter(["environ", "create_time"]):
        try:
            environ = candidate.info["environ"] or {}
            if environ.get("FUSION_RUN_ID") == run_id and os.getsid(candidate.pid) == candidate.pid:
                return Identity(candidate.pid, candidate.info["create_time"])
        except (OSError, psutil.Error):
            continue
    return None
