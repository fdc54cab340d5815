"""Per-run group leader: starts the simulation, outlives it, records how it ended.

The daemon starts this file as ``python -I -S shim.py ...`` in a new session,
so it imports the standard library only. Because the shim, not the daemon,
waits for the simulation, the exit status survives a daemon restart: it is
written to the exit record that a later daemon reads. Because the shim is a
child subreaper, a descendant that double-forks or calls ``setsid()`` is
re-parented here rather than to init, so the shim can still stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence

PR_SET_CHILD_SUBREAPER = 36
SPAWN_FAILED_EXIT = 127
# Python ignores SIGPIPE and SIGXFSZ; the simulation must start with defaults.
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def say(line: str) -> None:
    """A line on stderr (sim.log). A log that cannot take it (a full disk) must not
    end the shim before it has recorded and passed on the simulation's outcome."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fusion-runner-shim")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    # Where the daemon that started us reads the record too, so that the
    # outcome survives an exit.json that cannot be written.
    parser.add_argument("--status-fd", type=int, default=None)
    # Where a run on another machine (a Slurm job) says it has started, and how
    # it is known there: the daemon cannot see its processes.
    parser.add_argument("--started", default=None)
    # SIGTERM sent to the shim alone (Slurm's --signal=B:TERM before a time
    # limit) is passed to the simulation's group instead of being ignored.
    parser.add_argument("--forward-term", action="store_true")
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


def set_child_subreaper() -> bool:
    """Make orphaned descendants our children, so that we can reap them; False if refused.

    The daemon's one home of this fact too (local.py imports it: the shim may
    import nothing of ours)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def become_subreaper() -> None:
    if not set_child_subreaper():
        say("fusion-runner shim: cannot become a child subreaper")


def ignore_stop_signals(forward_term: bool = False) -> None:
    # The daemon signals the whole group, simulation included: the shim stays
    # to reap what is left and write the record. A Python-level handler (not
    # SIG_IGN) so that the simulation does not inherit an ignored signal.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: None)
    if forward_term:
        started = time.monotonic()

        def forward(_signum: int, _frame: object) -> None:
            # Once: the group includes the shim, which gets its own signal back.
            if "after" not in TERM_FORWARDED:
                TERM_FORWARDED["after"] = round(time.monotonic() - started, 3)
                with contextlib.suppress(OSError):
                    os.killpg(0, signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)


# With --forward-term, "after": seconds from the shim's start to the SIGTERM it passed on
# (Slurm's warning before the time limit, or a scancel); in the exit record as
# `term_after`, so that the daemon can tell a run stopped at its time limit.
TERM_FORWARDED: dict[str, float] = {}


def attempt() -> int:
    """Which attempt of a Slurm job this is (0 the first; a requeue counts up)."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(count) if count.isdigit() else 0


def write_started(path: str) -> None:
    """The started record: who the shim is on this machine (pid, group, start, boot)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as stat:
            start_ticks: int | None = int(stat.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        start_ticks = None
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id: str | None = boot.read().strip()
    except OSError:
        boot_id = None
    fields = {"pid": os.getpid(), "pgid": os.getpgid(0), "host": os.uname().nodename,
              "start_ticks": start_ticks, "boot_id": boot_id, "attempt": attempt()}
    try:
        save(path, json.dumps(fields))
    except OSError as error:
        say(f"fusion-runner shim: started record not saved: {error}")


def spawn(command: Sequence[str]) -> int:
    # The simulation starts with default actions and no blocked signal.
    return os.posix_spawnp(
        command[0], list(command), dict(os.environ), setsigdef=DEFAULT_SIGNALS, setsigmask=()
    )


def wait_for(sim_pid: int) -> int:
    """Reap children (orphans included) until the simulation itself ends."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == sim_pid:
            return status


def children(process_dir: str = "/proc/self") -> list[int]:
    """The children of the process whose /proc entry is `process_dir` ([] once it is
    gone): each thread's list, which costs in proportion to the tree, not to the machine."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"{process_dir}/task")
    except OSError:
        return pids  # gone meanwhile
    for task in tasks:
        try:
            with open(f"{process_dir}/task/{task}/children") as listing:
                pids.extend(int(pid) for pid in listing.read().split())
        except OSError:
            continue  # a thread that ended meanwhile
    return pids


def reap_any() -> bool:
    """Reap exited children; False once no child is left."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:
        return False
    return True


def signal_leftovers(signum: int) -> None:
    # Group members at any depth get it through the group; a descendant in
    # another session is reached once its parent is gone and it is ours.
    if signum != signal.SIGKILL:
        with contextlib.suppress(OSError):
            os.killpg(0, signum)
    for pid in children():
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def all_reaped_within(seconds: float) -> bool:
    """Reap children as they end (woken by SIGCHLD, which is blocked for this)."""
    deadline = time.monotonic() + seconds
    while reap_any():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        signal.sigtimedwait({signal.SIGCHLD}, remaining)
    return True


def stop_leftovers(grace: float) -> None:
    """TERM what the simulation left behind, KILL it after the grace period."""
    if not reap_any():
        return
    signal_leftovers(signal.SIGTERM)
    if all_reaped_within(grace):
        return
    while True:
        signal_leftovers(signal.SIGKILL)
        if all_reaped_within(0.1):
            return


def write_record(path: str, fields: dict[str, object], status_fd: int | None) -> None:
    """exit.json (atomically), and the same record down the status pipe.

    A record that cannot be saved (run folder gone, disk full) leaves no
    temporary file; the OS error travels in the piped copy and on stderr.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    fields["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
    fields["max_rss_kib"] = usage.ru_maxrss
    fields["shim_pid"] = os.getpid()
    fields["attempt"] = attempt()
    if "after" in TERM_FORWARDED:
        fields["term_after"] = TERM_FORWARDED["after"]
    try:
        save(path, json.dumps(fields))
    except OSError as error:
        fields["record_error"] = f"exit record not saved: {error}"
        say(f"fusion-runner shim: {fields['record_error']}")
    if status_fd is not None:
        # The daemon may be gone (it detached): then nobody reads the pipe.
        with contextlib.suppress(OSError):
            os.write(status_fd, json.dumps(fields).encode())


def save(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w") as record:
            record.write(text)
            record.flush()
            os.fsync(record.fileno())
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def record_of(status: int) -> dict[str, object]:
    if os.WIFSIGNALED(status):
        return {"exit_code": None, "signal": os.WTERMSIG(status), "spawn_error": None}
    code = os.waitstatus_to_exitcode(status)
    return {"exit_code": code, "signal": None, "spawn_error": None}


def end_as(status: int) -> None:
    """Exit as the simulation did: its exit code, or death by its signal.

    So the daemon that is our parent learns the outcome even from the wait
    status alone.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a full disk: the status matters more
            stream.flush()
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the simulation's core, not ours
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to end a process
    # Skip interpreter teardown (~6 ms): the run's end is waiting on this exit.
    os._exit(os.waitstatus_to_exitcode(status))


def exited_with(code: int) -> int:
    """The wait status of a process that exited with `code`."""
    return (code & 0xFF) << 8


def close_other_descriptors(keep: int | None) -> None:
    if keep is None:
        os.closerange(3, 1 << 16)
        return
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    # Ours alone: the simulation must not hold the daemon's pipe open.
    os.set_inheritable(keep, False)


def main(argv: Sequence[str]) -> int:
    """Run the simulation; the wait status to end with (see `end_as`)."""
    args = parse_args(argv)
    close_other_descriptors(args.status_fd)
    os.chdir(args.run_dir)
    become_subreaper()
    ignore_stop_signals(args.forward_term)
    if args.started is not None:
        write_started(args.started)
    # Held pending so that `sigtimedwait` wakes the moment a leftover ends.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        sim_pid = spawn(args.command)
    except OSError as error:
        say(f"fusion-runner: cannot start {args.command[0]!r}: {error}")
        fields: dict[str, object] = {"exit_code": None, "signal": None, "spawn_error": str(error)}
        write_record(args.record, fields, args.status_fd)
        return exited_with(SPAWN_FAILED_EXIT)
    status = wait_for(sim_pid)
    stop_leftovers(args.grace)
    write_record(args.record, record_of(status), args.status_fd)
    return status


if __name__ == "__main__":
    end_as(main(sys.argv[1:]))
