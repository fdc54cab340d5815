"""A run's processes on this machine: the shim, its group, the descendants that left
it; signalling them, knowing when all are gone, and finding a shim no row recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fusion_runner.executors import procfs
from fusion_runner.executors.identity import Identity, warn_once

# How a shim's command line names it, whichever installation started it (the
# second: versions before the package layout, whose runs may still be alive).
SHIM_SUFFIXES = (b"/fusion_runner/executors/shim.py", b"/fusion_runner/shim.py")
MAX_RECORD_BYTES = 65536


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
    warn_once(f"pgid={pgid}", f"process group {pgid} exists but {procfs.PROC_ROOT} shows "
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
