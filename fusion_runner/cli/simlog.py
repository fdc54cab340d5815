"""A run's sim.log: all of it, its last lines, or followed until the run ends.

The log is copied as bytes, so whatever the simulation wrote comes out unchanged.
A line is what ends with a newline (b"\n"), as for `tail`; an unfinished last
line counts as one.

A log past `max_log_bytes` is cut by the daemon to its newest part, behind a
marker line that says how much was dropped in all (daemon/logcap.py). Following
counts offsets in the simulation's whole output, so a cut neither repeats what
was shown nor skips what was kept; output dropped before it was shown shows
as the marker line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fusion_runner.cli import view
from fusion_runner.core import exitrecord
from fusion_runner.core.store import Store
from fusion_runner.daemon import logcap

FOLLOW_POLL_SECONDS = 0.1
CHUNK = 1 << 16
TAIL_BYTES = 1 << 16


def copy_from(path: Path, offset: int, out: BinaryIO) -> int:
    """Write what `path` holds past `offset`; the new offset (0 again if it shrank)."""
    try:
        with open(path, "rb") as log:
            if log.seek(0, os.SEEK_END) < offset:  # truncated or replaced
                offset = 0
            log.seek(offset)
            while chunk := log.read(CHUNK):
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return 0
    out.flush()
    return offset


def line_start(log: BinaryIO, count: int) -> int:
    """Where the last `count` lines of the open file begin: 0 if it has no more lines, its
    size for 0 lines. Read backwards from the end, a CHUNK at a time."""
    end = log.seek(0, os.SEEK_END)
    if count <= 0:
        return end
    position, found = end, 0
    stop = None  # the search's end within the next chunk read: before a final newline
    while position > 0:
        size = min(CHUNK, position)
        position -= size
        log.seek(position)
        chunk = log.read(size)
        if stop is None:  # the last chunk: a newline that ends the file starts no line
            stop = len(chunk) - 1 if chunk.endswith(b"\n") else len(chunk)
        while (stop := chunk.rfind(b"\n", 0, stop)) >= 0:
            found += 1
            if found == count:
                return position + stop + 1
        stop = CHUNK  # the whole of the chunk before
    return 0


def tail_offset(path: Path, count: int) -> int:
    """line_start of the log at `path`; 0 if there is none (yet)."""
    try:
        with open(path, "rb") as log:
            return line_start(log, count)
    except FileNotFoundError:
        return 0


def copy_last_lines(path: Path, count: int, out: BinaryIO) -> None:
    """The last `count` lines of the log, byte for byte, ending with a newline (one
    is added after an unfinished last line). FileNotFoundError if there is no log."""
    last = b"\n"
    with open(path, "rb") as log:
        log.seek(line_start(log, count))
        while chunk := log.read(CHUNK):
            out.write(chunk)
            last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")
    out.flush()


def follow(
    store: Store, run_id: str, log_path: Callable[[], Path], out: BinaryIO,
    sleep: Callable[[float], None] = time.sleep, offset: int = 0,
) -> None:
    """Copy the log from `offset` as it grows until the run has ended (or its row is gone)."""
    # Offsets in the simulation's whole output: the file's, plus what cuts dropped.
    output_offset = offset + _lag(log_path())[1]
    while True:
        # Whether it has ended is read before the copy, so the last copy holds
        # everything written up to the end.
        row = store.get_run(run_id)
        ended = row is None or view.has_ended(row)
        path = log_path()
        marker_bytes, lag = _lag(path)
        start = output_offset - lag
        if start < marker_bytes:
            start = 0  # output dropped before it was shown: the marker line says so
        output_offset = copy_from(path, start, out) + lag
        if ended:
            return
        sleep(FOLLOW_POLL_SECONDS)


def _lag(path: Path) -> tuple[int, int]:
    """(the log cap's marker line's length, how far the file's offsets lag behind the
    simulation's output: what cuts dropped in all, less the marker); (0, 0) for a log
    never cut, or none."""
    try:
        with open(path, "rb") as log:
            marker_bytes, dropped = logcap.read_marker(log.read(logcap.MARKER_LIMIT))
    except OSError:
        return 0, 0
    return marker_bytes, dropped - marker_bytes


def last_lines(path: Path, count: int) -> list[str] | None:
    """The last `count` lines of the log (decoded leniently), or None if it is missing.

    Cut as the daemon cuts a failed run's log tail (exitrecord.log_tail), from
    the last TAIL_BYTES: never from inside a line or a character.
    """
    if not path.exists():
        return None
    return exitrecord.log_tail(path, TAIL_BYTES).splitlines()[-count:]
