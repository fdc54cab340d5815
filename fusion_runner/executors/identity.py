"""A run's leader as it was seen: a pid alone may be reused.

Whether a process ended is the kernel's word (kill(pid, 0) fails with ESRCH),
never an absence from /proc, which a sandbox may hide; whether it is still the
same process is its start in clock ticks since boot, never the wall clock.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import psutil

from fusion_runner.executors import procfs
from fusion_runner.executors.base import Verdict

log = logging.getLogger("fusion_runner")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
        # an adopted one is rewritten with ticks (see LocalExecutor.upgrade_identity).
        now = legacy_start_time(stat)
        return None if now is None else now == self.start_time

    def is_alive(self) -> bool:
        """Whether the process may still run, during supervision.

        One that cannot be inspected counts as alive (with a warning, once):
        a run is never finalised while its process may live.
        """
        sight = self.look()
        if sight.verdict is Verdict.CANNOT_TELL:
            warn_once(f"pid={self.pid}", sight.why)
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


def warn_once(subject: str, why: str) -> None:
    if subject not in _warned:
        _warned.add(subject)
        log.warning("action=uninspectable %s detail=%r counted_as=alive", subject,
                    f"{why}; the run is not finalised while it may live")
