"""What an ended run leaves in its folder for whoever decides or shows its outcome:
the shim's exit record and the tail of its log. One read each, for daemon and clients."""

from __future__ import annotations

import os
from pathlib import Path

from fusion_runner.core.outcome import ExitRecord, tail_text

# How much of a log's end goes into a failed run's message.
LOG_TAIL_BYTES = 3072


def read(path: Path) -> ExitRecord | None:
    """The exit record at `path`; None when it is missing, unreadable or malformed."""
    try:
        return ExitRecord.from_json(path.read_text())
    except (OSError, ValueError):  # ValueError: UnicodeDecodeError among others
        return None


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last `limit` bytes of a log as text, from a whole line; "" if unreadable."""
    try:
        with open(path, "rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            # One byte more than kept, so that a cut first line can be told and dropped.
            log_file.seek(max(size - limit - 1, 0))
            return tail_text(log_file.read(), limit)
    except OSError:
        return ""
