"""Incremental reader of a run's progress.jsonl -> progress column updates (SPEC §5).

`apply_line` is pure; `ProgressReader` does I/O only inside `poll`. Nothing in
here raises for bad content: a bad line or value is skipped and described.
`LineReader` (complete lines, offsets, truncation, over-long lines) is shared
with the reader of FUSION's own log (`fusionlog`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

PROGRESS_COLUMNS = ("current_erlang", "total_erlangs", "current_iteration", "total_iterations")
MAX_LINE_BYTES = 1 << 20
READ_CHUNK = 1 << 20
# What one poll reads at most: a file that grew by a gigabyte (an endless line) is read
# over many polls, and the daemon's loop serves its other runs in between.
READ_PER_POLL = 16 * READ_CHUNK
MAX_NOTES = 100  # descriptions kept between take_problems(); the count is always exact
MAX_COUNT = (1 << 31) - 1  # the columns are SQL INTEGER (32-bit on PostgreSQL)

Columns = dict[str, float | int | None]

# JSON key -> count column (`erlang` -> current_erlang is the one float).
_COUNT_KEYS = {
    "iteration": "current_iteration",
    "total_iterations": "total_iterations",
    "total_erlangs": "total_erlangs",
}
_TOTAL_KEYS = {"total_iterations": "total_iterations", "total_erlangs": "total_erlangs"}
_EVENT_TYPES = frozenset(
    {"start", "erlang_start", "iteration", "erlang_complete", "complete", "error"}
)
_NO_TYPE = object()
_GONE = (-1, -1)  # the (st_dev, st_ino) of a file that was read and has disappeared


@dataclass
class Progress:
    """What the file has said so far."""

    current_erlang: float | None = None
    total_erlangs: int | None = None
    current_iteration: int | None = None
    total_iterations: int | None = None
    last_error: str | None = None  # message of the last `error` event
    exit_code: int | None = None  # exit_code of a `complete` event (a second witness)

    def columns(self) -> Columns:
        return {name: getattr(self, name) for name in PROGRESS_COLUMNS}


@dataclass(frozen=True)
class ErlangResult:
    """An `erlang_complete` event's metrics: one Erlang point's result (None: not said)."""

    erlang: float
    blocking_mean: float | None
    blocking_ci: float | None  # the interval's half width
    iterations: int | None


def erlang_result(
    record: dict[str, object], iterations: int | None
) -> tuple[ErlangResult | None, list[str]]:
    """The result an `erlang_complete` record gives (None without a valid `erlang`).

    `metrics.mean_blocking`, and the half width of [`ci_lower`, `ci_upper`]
    around it: the larger side, as the simulation may clip the interval to
    [0, 1]. `iterations`, which the event does not carry, is the caller's
    count of the point's iterations. A wrongly typed metric is skipped alone.
    """
    erlang = as_float(record.get("erlang"))
    if erlang is None:
        return None, []  # described by apply_record (or absent: nothing to keep)
    metrics = record.get("metrics")
    if metrics is None:
        metrics = {}
    if type(metrics) is not dict:
        return ErlangResult(erlang, None, None, iterations), [
            f"metrics: not an object: {_short(metrics)}"]
    problems: list[str] = []
    values: dict[str, float | None] = {}
    for key in ("mean_blocking", "ci_lower", "ci_upper"):
        value = metrics.get(key)
        values[key] = as_float(value)
        if value is not None and values[key] is None:
            problems.append(f"metrics.{key}: not a number: {_short(value)}")
    mean, lower, upper = values["mean_blocking"], values["ci_lower"], values["ci_upper"]
    half = None
    if mean is not None and lower is not None and upper is not None:
        half = max(upper - mean, mean - lower, 0.0)
    return ErlangResult(erlang, mean, half, iterations), problems


def apply_line(progress: Progress, line: bytes) -> list[str]:
    """Apply one complete line (without its newline); return what was skipped and why."""
    record, problems = parse_line(line)
    return problems if record is None else apply_record(progress, record)


def parse_line(line: bytes) -> tuple[dict[str, object] | None, list[str]]:
    """The line's record if it is a valid one (an object of a known type or none), else
    None and why not; a blank line is neither."""
    if not line or line.isspace():
        return None, []
    try:
        record = json.loads(line.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        return None, [f"malformed JSON: {_first_line(exc)}"]
    if type(record) is not dict:
        return None, [f"not a JSON object: {type(record).__name__}"]
    kind = record.get("type", _NO_TYPE)
    if kind is not _NO_TYPE and (type(kind) is not str or kind not in _EVENT_TYPES):
        return None, [f"unknown type {_short(kind)}"]
    return record, []


def apply_record(progress: Progress, record: dict[str, object]) -> list[str]:
    """Apply a valid record; a wrongly typed value is skipped by itself and described."""
    kind = record.get("type", _NO_TYPE)
    problems: list[str] = []
    _apply_erlang(progress, record, problems)
    _apply_values(progress, record, problems, _COUNT_KEYS)
    if kind == "start":
        _apply_config(progress, record, problems)
    elif kind == "complete":
        _apply_exit_code(progress, record, problems)
    elif kind == "error":
        _apply_message(progress, record, problems)
    return problems


def _apply_values(
    progress: Progress, record: dict[str, object], problems: list[str], counts: dict[str, str]
) -> None:
    for key, column in counts.items():
        if key in record:
            count = as_count(record[key])
            if count is None:
                problems.append(f"{key}: not a count: {_short(record[key])}")
            else:
                setattr(progress, column, count)


def _apply_erlang(progress: Progress, record: dict[str, object], problems: list[str]) -> None:
    if "erlang" in record:
        value = as_float(record["erlang"])
        if value is None:
            problems.append(f"erlang: not a number: {_short(record['erlang'])}")
        else:
            progress.current_erlang = value


def _apply_config(progress: Progress, record: dict[str, object], problems: list[str]) -> None:
    config = record.get("config")
    if type(config) is dict:
        _apply_values(progress, config, problems, _TOTAL_KEYS)
    elif config is not None:
        problems.append(f"config: not an object: {_short(config)}")


def _apply_exit_code(progress: Progress, record: dict[str, object], problems: list[str]) -> None:
    _apply_exact(progress, record, problems, ("exit_code", "exit_code", int, "an integer"))


def _apply_message(progress: Progress, record: dict[str, object], problems: list[str]) -> None:
    _apply_exact(progress, record, problems, ("message", "last_error", str, "a string"))


def _apply_exact(
    progress: Progress,
    record: dict[str, object],
    problems: list[str],
    rule: tuple[str, str, type, str],
) -> None:
    """record[key] -> progress.attribute when it is exactly of the type (bool is no int)."""
    key, attribute, kind, described = rule
    if key in record:
        value = record[key]
        if type(value) is kind:
            setattr(progress, attribute, value)
        else:
            problems.append(f"{key}: not {described}: {_short(value)}")


def as_float(value: object) -> float | None:
    """A finite float from a JSON int or float (bool is not a number)."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def as_count(value: object) -> int | None:
    """An int in [0, MAX_COUNT] from a JSON int or an integral float (bool is not a number)."""
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return None


def _short(value: object) -> str:
    if type(value) is str and len(value) > 40:
        value = value[:40]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_line(exc: BaseException) -> str:
    return (str(exc).partition("\n")[0] or type(exc).__name__)[:80]


class LineReader:
    """Incremental reader of a file's complete lines into a `Progress` (I/O only in `poll`).

    A subclass says what a line means (`_apply_line`). A line not yet ended by
    a newline is held until it is; one longer than MAX_LINE_BYTES is skipped
    without being held; a file that shrinks or is replaced is read again from
    the start. `offset` is where to resume after a restart.
    """

    def __init__(self, path: Path, *, offset: int = 0, progress: Progress | None = None) -> None:
        self.path = path
        self.progress = progress if progress is not None else Progress()
        self.problems = 0
        self._notes: list[str] = []
        self._reported = self.progress.columns()  # what the last poll left the caller with
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file read
        self._offset = offset  # end of the last complete line consumed
        self._read_pos = offset  # end of what has been read: offset + held or discarded bytes
        self._pending = b""  # the start of a line not yet ended, at most MAX_LINE_BYTES
        self._discarding = False  # inside a line longer than MAX_LINE_BYTES
        self.behind = False  # the last poll stopped at READ_PER_POLL, before the end

    @property
    def offset(self) -> int:
        """Bytes consumed (complete lines only), to resume from after a restart."""
        return self._offset

    def poll(self, limit: int | None = READ_PER_POLL) -> Columns:
        """Apply what is new in the file, `limit` bytes at most (`behind` says whether some
        is left); return the columns that changed since the last poll."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self._identity is not None:
                # Gone: a file made there next is a new one, even if it gets the old
                # inode number back (file systems reuse them at once).
                self._identity = _GONE
            return {}
        try:
            self._read_new(fd, limit)
        finally:
            os.close(fd)
        return self._changes()

    def shift(self, kept_from: int, now_at: int) -> None:
        """The file's bytes from `kept_from` on are now at `now_at`, those before are gone
        (the log cap, daemon/logcap.py): read on where this reader was, or from `now_at`
        if it had not read up to `kept_from`. What was read so far stays applied."""
        if self._read_pos >= kept_from:
            self._read_pos += now_at - kept_from
            self._offset = max(self._offset + now_at - kept_from, now_at)
            return
        self._offset = self._read_pos = now_at
        self._pending = b""
        self._discarding = False

    def take_problems(self) -> list[str]:
        """Descriptions of what was skipped since the last call (at most MAX_NOTES); clears."""
        notes, self._notes, self.problems = self._notes, [], 0
        return notes

    def _apply_line(self, line: bytes) -> list[str]:
        """Apply one complete line (at most MAX_LINE_BYTES, no newline); what was skipped."""
        raise NotImplementedError

    def _read_new(self, fd: int, limit: int | None) -> None:
        stat = os.fstat(fd)
        identity = (stat.st_dev, stat.st_ino)
        replaced = self._identity is not None and identity != self._identity
        if replaced or stat.st_size < self._read_pos:
            self._start_over()
        self._identity = identity
        # Bounded by the size seen now, not a moving EOF, and by the limit.
        end = stat.st_size if limit is None else min(stat.st_size, self._read_pos + limit)
        while self._read_pos < end:
            data = os.pread(fd, min(READ_CHUNK, end - self._read_pos), self._read_pos)
            if not data:
                break
            self._feed(data)
        self.behind = self._read_pos < stat.st_size

    def _start_over(self) -> None:
        """The file shrank or was replaced: its content is new, so is the state read from it."""
        self.progress = Progress()
        self._offset = self._read_pos = 0
        self._pending = b""
        self._discarding = False

    def _feed(self, data: bytes) -> None:
        self._read_pos += len(data)
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._discarding = False
            data = data[newline + 1 :]
            self._offset = self._read_pos - len(data)
        lines = (self._pending + data if self._pending else data).split(b"\n")
        self._pending = lines.pop()
        position = self._offset
        for line in lines:
            self._apply(line, position)
            position += len(line) + 1
        self._offset = position
        if len(self._pending) > MAX_LINE_BYTES:
            self._note(position, f"line longer than {MAX_LINE_BYTES} bytes skipped")
            self._pending = b""
            self._discarding = True

    def _apply(self, line: bytes, position: int) -> None:
        if len(line) > MAX_LINE_BYTES:
            self._note(position, f"line longer than {MAX_LINE_BYTES} bytes skipped")
            return
        for problem in self._apply_line(line):
            self._note(position, problem)

    def _note(self, position: int, problem: str) -> None:
        self.problems += 1
        if len(self._notes) < MAX_NOTES:
            self._notes.append(f"byte {position}: {problem}")

    def _changes(self) -> Columns:
        columns = self.progress.columns()
        changed = {name: value for name, value in columns.items() if self._reported[name] != value}
        self._reported = columns
        return changed


class ProgressReader(LineReader):
    """Incremental reader of one run's progress.jsonl.

    Besides the columns it keeps each `erlang_complete` event's result until
    `take_results`, with the iterations seen of that Erlang point (else
    `total_iterations`, e.g. after a restart that resumed past them).
    """

    # Whether the file has had a valid line: then, with progress_source "auto",
    # it alone drives the columns (a truncation does not take that back).
    spoken = False

    def __init__(self, path: Path, *, offset: int = 0, progress: Progress | None = None) -> None:
        super().__init__(path, offset=offset, progress=progress)
        self._results: dict[float, ErlangResult] = {}  # not yet taken, by Erlang
        self._iterations: dict[float, int] = {}  # highest iteration seen per Erlang

    def take_results(self) -> list[ErlangResult]:
        """The results of the `erlang_complete` events read since the last call; clears."""
        results, self._results = list(self._results.values()), {}
        return results

    def _apply_line(self, line: bytes) -> list[str]:
        record, problems = parse_line(line)
        if record is None:
            return problems
        self.spoken = True
        problems = apply_record(self.progress, record)
        kind = record.get("type", _NO_TYPE)
        if kind == "erlang_complete":
            problems += self._keep_result(record)
        elif self.progress.current_erlang is not None and "iteration" in record:
            iteration = as_count(record["iteration"])
            if iteration is not None:
                erlang = self.progress.current_erlang
                self._iterations[erlang] = max(iteration, self._iterations.get(erlang, 0))
        return problems

    def _start_over(self) -> None:
        super()._start_over()
        self._iterations = {}  # a new file: results not yet taken are kept

    def _keep_result(self, record: dict[str, object]) -> list[str]:
        erlang = as_float(record.get("erlang"))
        seen = self._iterations.get(erlang) if erlang is not None else None
        result, problems = erlang_result(record, seen or self.progress.total_iterations)
        if result is not None:
            self._results[result.erlang] = result
        return problems
