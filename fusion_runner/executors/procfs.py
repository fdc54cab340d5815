"""What /proc says of processes, read without psutil and without the wall clock.

Facts only: `identity.Identity.look` decides from them what a process is.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusion_runner.executors import shim

# Module constants rather than literals so that a test can point them at a
# folder of its own (a pid whose entry is missing while the process exists).
PROC_ROOT = Path("/proc")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
MOUNTINFO_FILE = Path("/proc/self/mountinfo")
# A zombie has ended (only its exit status waits to be reaped); X is "dead".
ENDED_STATES = frozenset({"Z", "X", "x"})
# hidepid values under which every process stays listed and readable.
_VISIBLE_HIDEPID = frozenset({"0", "off"})


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat fusion-runner needs (see proc(5))."""

    state: str  # field 3
    pgrp: int  # field 5
    session: int  # field 6
    start_ticks: int  # field 22: clock ticks from boot to the process's start


def parse_stat(data: bytes) -> ProcStat:
    """A /proc/PID/stat line; raises ValueError if it is not one."""
    # Field 2 is the command name in parentheses, and it may itself hold
    # spaces and ')': the fields that follow start after the LAST ')'.
    close = data.rfind(b")")
    if close < 0:
        raise ValueError("no ')' closes the command name")
    after = data[close + 1:].split()
    if len(after) < 20:
        raise ValueError(f"{len(after) + 2} fields, fewer than 22")
    # after[0] is field 3, so field N is after[N - 3].
    return ProcStat(state=after[0].decode("ascii", "replace"), pgrp=int(after[2]),
                    session=int(after[3]), start_ticks=int(after[19]))


def read_stat(pid: int) -> ProcStat:
    """Raises OSError when the entry is missing or unreadable, ValueError if garbled."""
    with open(PROC_ROOT / str(pid) / "stat", "rb") as stat:
        return parse_stat(stat.read())


def all_stats() -> Iterator[tuple[int, ProcStat]]:
    """Every process /proc lists and lets us read (not necessarily every process)."""
    try:
        names = os.listdir(PROC_ROOT)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            try:
                yield int(name), read_stat(int(name))
            except (OSError, ValueError):
                continue  # ended meanwhile, or unreadable


def children(pid: int) -> list[int]:
    return shim.children(str(PROC_ROOT / str(pid)))


def nul_separated(pid: int, name: str) -> list[bytes] | None:
    """/proc/PID/environ or cmdline as a list; None when it cannot be read."""
    try:
        with open(PROC_ROOT / str(pid) / name, "rb") as listing:
            return listing.read().split(b"\0")
    except OSError:
        return None


def boot_id() -> str | None:
    """This boot's id; None when the machine does not say (the ticks then decide alone)."""
    return _read_boot_id(BOOT_ID_FILE)


@functools.cache
def _read_boot_id(path: Path) -> str | None:
    # Cached: it cannot change while this process lives.
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def hidden_processes() -> str | None:
    """Why /proc may not list every process of the machine, or None.

    A proc mount with hidepid= (systemd's ProtectProc= mounts one) hides or
    locks the entries of processes we may not ptrace, so that not seeing a
    process does not mean it has ended.
    """
    hidepid = _proc_mount_option("hidepid")
    if hidepid is None or hidepid in _VISIBLE_HIDEPID:
        return None
    return (f"{PROC_ROOT} is mounted with hidepid={hidepid} (a sandbox such as systemd's "
            f"ProtectProc= with PrivateUsers=yes): processes of an earlier start may be hidden")


def _proc_mount_option(name: str) -> str | None:
    """An option of the proc mount at PROC_ROOT, from the last mount there (the one seen)."""
    try:
        lines = MOUNTINFO_FILE.read_text().splitlines()
    except OSError:
        return None
    value = None
    for line in lines:
        # "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS"
        mount, _, filesystem = line.partition(" - ")
        fields, described = mount.split(), filesystem.split()
        if len(fields) < 5 or len(described) < 3 or fields[4] != str(PROC_ROOT):
            continue
        options = [option.partition("=") for option in described[2].split(",")]
        found = [setting for key, _, setting in options if key == name]
        value = found[-1] if described[0] == "proc" and found else None
    return value
