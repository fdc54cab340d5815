"""A run's sim.log: all of it, its last lines, or followed until the run ends.

The log is copied as bytes, so whatever the simulation wrote comes out unchanged.
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


def follow(
    store: Store, run_id: str, log_path: Callable[[], Path], out: BinaryIO,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Copy the log as it grows until the run has ended (or its row is gone)."""
    offset = 0
    while True:
        # Whether it has ended is read before the copy, so the last copy holds
        # everything written up to the end.
        row = store.get_run(run_id)
        ended = row is None or view.has_ended(row)
        offset = copy_from(log_path(), offset, out)
        if ended:
            return
        sleep(FOLLOW_POLL_SECONDS)


def last_lines(path: Path, count: int) -> list[str] | None:
    """The last `count` lines of the log (decoded leniently), or None if it is missing.

    Cut as the daemon cuts a failed run's log tail (exitrecord.log_tail), from
    the last TAIL_BYTES: never from inside a line or a character.
    """
    if not path.exists():
        return None
    return exitrecord.log_tail(path, TAIL_BYTES).splitlines()[-count:]
