"""The log cap: a run's logs/sim.log past `max_log_bytes` keeps its newest half.

Truncated in place with the tail kept, not rotated to ``sim.log.1``: the
simulation holds the log open for as long as it runs, and a rename would leave
it writing to the renamed file, which then grows without bound while
``sim.log`` stays empty. Cutting the front off the same file works because
every writer has it open with O_APPEND (the shim's stdout and stderr:
executors/local.py; Slurm's ``--open-mode=append``): each write lands at the
end of the file as it is at that moment, so after a cut the simulation's next
line follows the kept tail, where a writer with its own offset would leave a
hole of zeros as large as all it wrote before.

After a cut the file reads::

    [fusion-runner: 94371840 bytes of older output dropped (max_log_bytes=10485760)]
    <the newest output, from the start of a line>

The number is the total dropped since the run started (read back from the
marker of the previous cut), so `logs --follow` can tell where it was. The
marker line may end in spaces: it fills the room the cut leaves.

How the front goes, by what the file system can do:
- collapse (ext4, XFS): fallocate(FALLOC_FL_COLLAPSE_RANGE) removes whole blocks
  from the front, under the file's lock that appends take too: nothing written
  meanwhile is lost, and nothing is copied; the marker is written over what is
  left of the block before the kept part.
- copy-truncate (tmpfs, NFS, ...): the kept part is copied to the front in
  chunks (memory bounded by CHUNK), forward, to a place before what is still to
  be read, then the file is cut after it. Bytes written in the instant between
  the copy's last read and the cut (two system calls) are lost, as with
  logrotate's copytruncate. A simulation that outruns the copy for longer than
  one cap's worth is not cut that time (None): the copy has only duplicated
  output in the part that the next cut drops.

Half of the cap is kept so that a copy costs at most one byte copied per byte
written: a cut copies max_log_bytes/2 bytes once per max_log_bytes/2 written.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

# Read and written at a time while moving the tail: the daemon's memory for a cut.
CHUNK = 1 << 20
# How far past the half-way point a line start is looked for; beyond, the cut
# falls inside a line (one longer than this).
LINE_SEARCH_BYTES = 1 << 16
_MARKER = re.compile(
    rb"\[fusion-runner: (\d+) bytes of older output dropped \(max_log_bytes=\d+\)\] *\n")
# The longest marker line (both numbers of 20 digits), before its padding.
MARKER_BYTES = len(
    b"[fusion-runner:  bytes of older output dropped (max_log_bytes=)]\n") + 40
FALLOC_FL_COLLAPSE_RANGE = 0x08
# Blocks larger than this are not collapsed: the marker's padding would be as long.
MAX_COLLAPSE_BLOCK = 1 << 16
MARKER_LIMIT = MAX_COLLAPSE_BLOCK + MARKER_BYTES  # bytes read when looking for a marker
# What a file system that cannot collapse a range says.
_CANNOT_COLLAPSE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENOTTY}


@dataclass(frozen=True)
class Cut:
    """One cut of a log: where the kept part was and where it is now."""

    kept_from: int  # the offset, in the file before the cut, of the first byte kept
    marker_bytes: int  # the marker line's length: where the kept part starts now
    dropped: int  # the simulation's bytes dropped by this cut
    total_dropped: int  # ... since the run started (this cut's included)
    how: str  # "collapse" or "copy"


def marker(total_dropped: int, max_bytes: int, length: int = 0) -> bytes:
    """The marker line, padded with spaces to `length` bytes where that is longer."""
    text = (f"[fusion-runner: {total_dropped} bytes of older output dropped "
            f"(max_log_bytes={max_bytes})]").encode()
    return text.ljust(length - 1) + b"\n"


def read_marker(head: bytes) -> tuple[int, int]:
    """(the marker's length, the total it says was dropped) of a log starting with
    `head`; (0, 0) for a log that was never cut."""
    found = _MARKER.match(head)
    return (0, 0) if found is None else (found.end(), int(found.group(1)))


def cap(path: Path, max_bytes: int) -> Cut | None:
    """Cut the log at `path` to its newest half if it is larger than `max_bytes`.

    None if nothing was cut: not larger, gone, not a regular file of one link,
    or written faster than it is copied. OSError for what the file system
    refuses (a symbolic link in its place among them).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        status = os.fstat(fd)
        size = status.st_size
        # Only the run's own regular file: never one a simulation linked in its place.
        if size <= max_bytes or not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
            return None
        old_marker, earlier = read_marker(os.pread(fd, MARKER_LIMIT, 0))
        kept_from = _line_start(fd, size - max_bytes // 2)
        dropped = kept_from - old_marker
        total = earlier + dropped
        head_bytes = _collapse(fd, kept_from, status.st_blksize)
        if head_bytes is not None:
            os.pwrite(fd, marker(total, max_bytes, head_bytes), 0)
            return Cut(kept_from, head_bytes, dropped, total, "collapse")
        head = marker(total, max_bytes)
        if not _move_and_cut(fd, kept_from, head, budget=max_bytes + size - kept_from):
            return None
        return Cut(kept_from, len(head), dropped, total, "copy")
    finally:
        os.close(fd)


def _line_start(fd: int, offset: int) -> int:
    """The start of the first line at or after `offset` (within LINE_SEARCH_BYTES),
    else `offset` itself."""
    newline = os.pread(fd, LINE_SEARCH_BYTES, offset - 1).find(b"\n")
    return offset if newline < 0 else offset + newline


def _collapse(fd: int, kept_from: int, block: int) -> int | None:
    """Remove the whole blocks before `kept_from` that leave room for a marker; the
    bytes left before `kept_from` (the marker's room). None where the file system
    cannot, or nothing would be removed."""
    if not 0 < block <= MAX_COLLAPSE_BLOCK:
        return None
    removed = (kept_from - MARKER_BYTES) // block * block
    if removed <= 0:
        return None
    if _fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, removed) != 0:
        code = ctypes.get_errno()
        if code in _CANNOT_COLLAPSE:
            return None
        raise OSError(code, os.strerror(code))
    return kept_from - removed


def _fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    libc.fallocate.restype = ctypes.c_int
    return int(libc.fallocate(fd, mode, offset, length))


def _move_and_cut(fd: int, source: int, head: bytes, budget: int) -> bool:
    """Copy everything from `source` to the end to just after `head`, write `head` at
    the start, cut the file after the copy. False (nothing cut) if more than `budget`
    bytes had to be copied: the simulation outruns the copy."""
    target = len(head)
    if target > source:
        return False  # a cap too small for its own marker: config.py keeps it larger
    wrote_head = False
    while True:
        data = os.pread(fd, CHUNK, source)
        if not data:
            if wrote_head:
                # Right after the last read: the window in which a write is lost.
                os.ftruncate(fd, target)
                return True
            os.pwrite(fd, head, 0)
            wrote_head = True
            continue  # what came meanwhile, then the cut at once
        _write_all(fd, data, target)
        source += len(data)
        target += len(data)
        budget -= len(data)
        if budget < 0:
            return False


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
