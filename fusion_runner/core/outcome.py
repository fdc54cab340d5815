"""How a run ended -> (status, error_message) (SPEC §6). Pure: no I/O."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
from dataclasses import dataclass

from fusion_runner.core.status import RunStatus

MAX_MESSAGE_BYTES = 4096
TRIMMED = "..."

_HOW_IT_ENDED = ("exit_code", "signal", "spawn_error")
_NEWLINE = ord("\n")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")  # NUL (PostgreSQL text), lone surrogates


@dataclass(frozen=True)
class ExitRecord:
    """What the per-run shim writes to exit.json: exactly one of the first three is set."""

    exit_code: int | None
    signal: int | None
    spawn_error: str | None
    cpu_seconds: float = 0.0
    max_rss_kib: int = 0
    # Why exit.json could not be saved, in the copy the shim piped to the daemon.
    record_error: str | None = None
    shim_pid: int | None = None

    @classmethod
    def from_json(cls, text: str) -> ExitRecord | None:
        """The record, or None for anything malformed (never raises)."""
        try:
            fields = json.loads(text)
        except (ValueError, RecursionError, TypeError):
            return None
        if not isinstance(fields, dict) or not _is_well_formed(fields):
            return None
        return cls(
            exit_code=fields.get("exit_code"),
            signal=fields.get("signal"),
            spawn_error=fields.get("spawn_error"),
            cpu_seconds=float(fields.get("cpu_seconds", 0.0)),
            max_rss_kib=fields.get("max_rss_kib", 0),
            record_error=_text_or_none(fields.get("record_error")),
            shim_pid=_pid_or_none(fields.get("shim_pid")),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _is_well_formed(fields: dict[str, object]) -> bool:
    exit_code, signum, spawn_error = (fields.get(key) for key in _HOW_IT_ENDED)
    if sum(value is not None for value in (exit_code, signum, spawn_error)) != 1:
        return False
    cpu_seconds = fields.get("cpu_seconds", 0.0)
    return (
        (exit_code is None or _is_int_in(exit_code, 0, 255))
        and (signum is None or _is_int_in(signum, 1, 255))
        and (spawn_error is None or isinstance(spawn_error, str))
        and isinstance(cpu_seconds, int | float)
        and not isinstance(cpu_seconds, bool)
        and 0 <= cpu_seconds < math.inf  # False for NaN too
        and _is_int_in(fields.get("max_rss_kib", 0), 0, None)
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _pid_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and _is_int_in(value, 1, None) else None


def _is_int_in(value: object, low: int, high: int | None) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return low <= value and (high is None or value <= high)


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    error_message: str | None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def decide(
    record: ExitRecord | None, wait_status: int | None, last_error: str | None, log_tail: str
) -> Outcome:
    """The outcome from the exit status: the shim's record, else the shim's own wait status.

    The detail of a failure is the simulation's last `error` event, else the
    tail of its log; the whole message is bounded to MAX_MESSAGE_BYTES.
    """
    if record is not None and record.spawn_error is not None:
        return _failed(f"cannot start the simulation: {record.spawn_error}", "")
    if record is not None and record.exit_code == 0:
        return Outcome(RunStatus.COMPLETED, None)
    detail = (last_error or "").strip() or log_tail.strip()
    if record is None:
        return _failed(_shim_head(wait_status), detail)
    if record.signal is not None:
        head = f"killed by signal {signal_name(record.signal)}"
    else:
        head = f"exit code {record.exit_code}"
    if record.record_error:
        head = f"{head} ({record.record_error})"
    return _failed(head, detail)


def _shim_head(wait_status: int | None) -> str:
    # No exit record: the shim itself died or could not write it, so the
    # simulation's own outcome is unknown and the run cannot count as completed.
    try:
        code = None if wait_status is None else os.waitstatus_to_exitcode(wait_status)
    except (ValueError, OverflowError):
        code = None
    if code is None:
        return "exit status could not be recovered"
    if code < 0:
        return f"runner shim killed by signal {signal_name(-code)}"
    return f"runner shim exited with code {code} and left no exit record"


def _failed(head: str, detail: str) -> Outcome:
    return Outcome(RunStatus.FAILED, _bounded(head, detail))


def _bounded(head: str, detail: str) -> str:
    """head, then detail on the following lines, in at most MAX_MESSAGE_BYTES of UTF-8.

    The detail is trimmed from its start (a log's error is at its end), never
    inside a character; the head is cut only if it alone is too long.
    """
    head, detail = _storable(head), _storable(detail)
    head_bytes, detail_bytes = head.encode(), detail.encode()
    budget = MAX_MESSAGE_BYTES - len(head_bytes) - 1
    if len(detail_bytes) <= budget:
        return f"{head}\n{detail}" if detail else head
    budget -= len(TRIMMED)
    if budget <= 0:
        return head_bytes[:MAX_MESSAGE_BYTES].decode(errors="ignore")  # drops a cut character
    return f"{head}\n{TRIMMED}{detail_bytes[-budget:].decode(errors='ignore')}"


def _storable(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text)


def tail_text(data: bytes, max_bytes: int = 3072) -> str:
    """The end of a log: its last max_bytes, without a cut first line, trailing space stripped."""
    start = max(len(data) - max(max_bytes, 0), 0)
    chunk = data[start:]
    if start > 0 and data[start - 1] != _NEWLINE:
        cut_line_end = chunk.find(b"\n")
        chunk = chunk[cut_line_end + 1 :] if cut_line_end >= 0 else _skip_cut_character(chunk)
    return chunk.decode("utf-8", errors="replace").rstrip()


def _skip_cut_character(chunk: bytes) -> bytes:
    skip = 0
    while skip < min(3, len(chunk)) and chunk[skip] & 0xC0 == 0x80:  # UTF-8 continuation
        skip += 1
    return chunk[skip:]
