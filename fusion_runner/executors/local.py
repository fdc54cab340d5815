"""Where a run executes: spawn its shim, know its processes, stop them.

This is the seam for other executors: the supervisor only calls `spawn`,
`signal_tree`, `tree_gone`, `reap`, `find_shim`, `left_a_trace`,
`Identity.look`, the status pipe's `piped_record` / `close_status_pipe`, and
`procfs.hidden_processes`.

Whether a process ended is the kernel's word (kill(pid, 0) fails with ESRCH),
never an absence from /proc, which a sandbox may hide; whether it is still the
same process is its start in clock ticks since boot, never the wall clock.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fusion_runner.core.rundir import RunPaths
from fusion_runner.executors import procfs, shim

log = logging.getLogger("fusion_runner")

SHIM_PATH = str(Path(shim.__file__).resolve())
# Python ignores these; a child must start with the default action.
_RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
# The shim's end of its status pipe, in the shim.
SHIM_STATUS_FD = 3
MAX_RECORD_BYTES = 65536
# How a shim's command line names it, whichever installation started it (the
# second: versions before the package layout, whose runs may still be alive).
SHIM_SUFFIXES = (b"/fusion_runner/executors/shim.py", b"/fusion_runner/shim.py")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Verdict(enum.Enum):
    """What a recorded process is now."""

    ALIVE = "alive"
    # Ended: the kernel has no such pid, the process is a zombie, or it was
    # recorded in an earlier boot.
    GONE = "gone"
    # The pid belongs to another process: its start differs.
    REUSED = "reused"
    # The kernel says the pid exists but /proc will not show it, so its start
    # cannot be compared: neither ours nor a stranger's for sure.
    CANNOT_TELL = "cannot tell"


@dataclass(frozen=True)
class Sight:
    verdict: Verdict
    stat: procfs.ProcStat | None = None  # what /proc said, when it could be read
    why: str = ""  # with CANNOT_TELL: the cause, for an operator


@dataclass(frozen=True)
class Identity:
    """A process as it was when we saw it: a pid alone may be reused.

    Its start is in clock ticks since boot, with the boot's id: unlike a
    wall-clock start time (psutil's create_time adds a boot time it re-reads
    from the clock) it does not move when the clock is stepped.
    """

    pid: int
    start_ticks: int | None
    boot_id: str | None
    # psutil's create_time: compared only for rows of earlier versions, which
    # recorded nothing else, and still written for their readers.
    start_time: float | None = None

    def __post_init__(self) -> None:
        if self.start_ticks is None and self.start_time is None:
            raise ValueError(f"process {self.pid}: no start recorded")

    @classmethod
    def of(cls, pid: int, stat: procfs.ProcStat) -> Identity:
        return cls(pid, stat.start_ticks, procfs.boot_id(), legacy_start_time(stat))

    @classmethod
    def read(cls, pid: int) -> Identity:
        """The identity of process `pid` now; raises OSError or ValueError if unreadable."""
        return cls.of(pid, procfs.read_stat(pid))

    def of_this_boot(self) -> bool:
        # Without a recorded boot id (rows of earlier versions) or a current one
        # (a machine that does not say), the start alone decides.
        current = procfs.boot_id()
        return self.boot_id is None or current is None or self.boot_id == current

    def look(self) -> Sight:
        """The one place that decides whether the process is alive, gone, reused, or
        cannot be told: the kernel says whether the pid exists (its answer does
        not depend on what /proc shows us), /proc whether it is the same process."""
        if self.pid <= 0 or not self.of_this_boot():
            # pid <= 0 names no process (kill() would address a group); every
            # process of an earlier boot has ended.
            return Sight(Verdict.GONE)
        if not _exists(self.pid):
            return Sight(Verdict.GONE)
        try:
            stat = procfs.read_stat(self.pid)
        except (OSError, ValueError) as error:
            if not _exists(self.pid):
                return Sight(Verdict.GONE)  # it ended between the two looks
            return Sight(Verdict.CANNOT_TELL, why=_why_uninspectable(self.pid, error))
        same = self._started_as(stat)
        if same is None:
            return Sight(Verdict.CANNOT_TELL, stat, why=_why_incomparable(self.pid))
        if not same:
            return Sight(Verdict.REUSED, stat)
        if stat.state in procfs.ENDED_STATES:
            return Sight(Verdict.GONE, stat)
        return Sight(Verdict.ALIVE, stat)

    def _started_as(self, stat: procfs.ProcStat) -> bool | None:
        """Whether `stat` is of the process we saw; None if that cannot be compared."""
        if self.start_ticks is not None:
            return stat.start_ticks == self.start_ticks
        # A row of an earlier version holds psutil's create_time alone: ticks
        # plus a boot time derived from the wall clock. It is compared exactly,
        # as those versions did, so such a row is misjudged after a clock step;
        # an adopted one is rewritten with ticks (see Supervisor._record_ticks).
        now = legacy_start_time(stat)
        return None if now is None else now == self.start_time

    def is_alive(self) -> bool:
        """Whether the process may still run, during supervision.

        One that cannot be inspected counts as alive (with a warning, once):
        a run is never finalised while its process may live.
        """
        sight = self.look()
        if sight.verdict is Verdict.CANNOT_TELL:
            _warn_once(f"pid={self.pid}", sight.why)
        return sight.verdict in (Verdict.ALIVE, Verdict.CANNOT_TELL)

    def is_reused(self) -> bool:
        """Whether the pid, and the process group of that number, may now be another
        process's: it was started anew, or recorded in an earlier boot."""
        return not self.of_this_boot() or self.look().verdict is Verdict.REUSED


def legacy_start_time(stat: procfs.ProcStat) -> float | None:
    """What psutil's create_time() gives for this process now (the same arithmetic):
    wall-clock seconds, which move with every step of the clock. None when /proc/stat
    (its boot time) is hidden, as systemd's ProcSubset=pid does."""
    try:
        return float(stat.start_ticks) / CLOCK_TICKS + psutil.boot_time()
    except (OSError, RuntimeError):
        return None


def _exists(pid: int) -> bool:
    """Whether the kernel has a process `pid` (a zombie included), whatever /proc shows."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's, or another user namespace's: it exists
    return True


def _why_uninspectable(pid: int, error: Exception) -> str:
    entry = procfs.PROC_ROOT / str(pid)
    if isinstance(error, FileNotFoundError):
        return (f"{entry} is hidden: a sandbox such as systemd's ProtectProc=invisible with "
                f"PrivateUsers=yes hides processes of an earlier start")
    if isinstance(error, PermissionError):
        return (f"{entry}/stat is not readable: /proc is mounted with hidepid= (a sandbox such "
                f"as systemd's ProtectProc=) and the process is not ours to inspect")
    return f"{entry}/stat: {error}"


def _why_incomparable(pid: int) -> str:
    return (f"an earlier version recorded process {pid}'s start as wall-clock time, and the "
            f"boot time it needs is not readable in /proc/stat (systemd's ProcSubset=pid "
            f"hides it)")


# What was already warned about (a pid, a group): a warning per pass would flood the log.
_warned: set[str] = set()


def _warn_once(subject: str, why: str) -> None:
    if subject not in _warned:
        _warned.add(subject)
        log.warning("action=uninspectable %s detail=%r counted_as=alive", subject,
                    f"{why}; the run is not finalised while it may live")


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


def _collect_descendants(run: RunProcess) -> None:
    """Remember the run's descendants outside its group: killpg does not reach them.

    Walks /proc/PID/task/TID/children from the shim down, which costs in
    proportion to the run's tree, not to every process on the machine.
    """
    if not run.shim.is_alive():
        return
    this_boot = procfs.boot_id()
    pending = procfs.children(run.pid)
    while pending:
        pid = pending.pop()
        pending.extend(procfs.children(pid))
        try:
            stat = procfs.read_stat(pid)
        except (OSError, ValueError):
            continue
        if stat.pgrp != run.pgid:
            run.descendants.add(Identity(pid, stat.start_ticks, this_boot))


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
    """Whether a member of the group that is not a zombie is left; one that /proc
    does not show counts as live, so that no run is finalised under it."""
    if not _group_exists(pgid):
        return False
    members = [stat for _, stat in procfs.all_stats() if stat.pgrp == pgid]
    if any(stat.state not in procfs.ENDED_STATES for stat in members):
        return True
    # killpg succeeds while zombies remain: if /proc shows some, they are what
    # it found. If it shows none, the members are hidden from us, unless they
    # ended between the two looks.
    if members or not _group_exists(pgid):
        return False
    _warn_once(f"pgid={pgid}", f"process group {pgid} exists but {procfs.PROC_ROOT} shows "
                               f"none of its members")
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's members: it exists
    return True


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
    whose environment or command line names the run (the simulation below it is
    no leader). None if /proc shows none; `procfs.hidden_processes` says whether
    it could be hiding one."""
    for pid, stat in procfs.all_stats():
        if stat.session == pid and stat.state not in procfs.ENDED_STATES \
                and _names_run(pid, run_id):
            return Identity.of(pid, stat)
    return None


def _names_run(pid: int, run_id: str) -> bool:
    environ = procfs.nul_separated(pid, "environ")
    if environ is not None and f"FUSION_RUN_ID={run_id}".encode() in environ:
        return True
    # Another user's (or user namespace's) environment takes ptrace rights to
    # read; its command line does not, and a shim's names its run directory.
    argv = procfs.nul_separated(pid, "cmdline")
    return argv is not None and _is_shim_of(argv, run_id)


def _is_shim_of(argv: list[bytes], run_id: str) -> bool:
    if not any(arg.endswith(SHIM_SUFFIXES) for arg in argv) or b"--run-dir" not in argv:
        return False
    at = argv.index(b"--run-dir") + 1
    return at < len(argv) and os.path.basename(argv[at]) == run_id.encode()
