"""The few inotify(7) calls that progress watching needs, through libc.

watchdog runs every event through three threads and a dozen Python objects;
a simulation appending a thousand progress lines a second to each of ten runs
would cost most of a core that way. Here a read returns a whole batch of
events (the kernel merges repeated ones), parsed with one struct call each.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_ONLYDIR = 0x01000000
IN_ONESHOT = 0x80000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# What changes a file's content or replaces it, seen from its directory.
FILE_CHANGES = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    name: str


class Inotify:
    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise _os_error("inotify_init1")

    def fileno(self) -> int:
        return int(self._fd)

    def watch_folder(self, path: str, mask: int = FILE_CHANGES) -> int:
        """Watch a folder (not recursively); raises OSError, e.g. ENOSPC at the watch limit."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask | IN_ONLYDIR)
        if wd < 0:
            raise _os_error(path)
        return int(wd)

    def unwatch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if already gone

    def read(self) -> list[Event]:
        """The events queued now; [] when there are none."""
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return []
        return list(parse(data))

    def close(self) -> None:
        os.close(self._fd)


def parse(data: bytes) -> list[Event]:
    events: list[Event] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        name = data[start : start + length].split(b"\0", 1)[0]
        events.append(Event(wd, mask, os.fsdecode(name)))
        offset = start + length
    return events


def _os_error(what: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, os.strerror(number), what)
