"""FUSION's own log -> progress columns and result folders (SPEC §5, FUSION-FACTS).

FUSION writes no progress.jsonl, but its log (Python logging, each record
`YYYY-MM-DD HH:MM:SS,mmm - logger - LEVEL - message`) says what the columns need:

    Starting simulation for 300.0 Erlang (load 1/3)   -> current_erlang, total_erlangs
    Iteration 1 out of 4 completed for Erlang: 300.0  -> current_iteration,
                                                         total_iterations, current_erlang
    Saving to: /path/of/its/results                   -> a folder of the run's results

Only a line that starts with the logging prefix counts: the other lines of a
multi-line message (the closing BATCH SIMULATION SUMMARY, a traceback) and
anything else the simulation prints are ignored, so a traceback quoting such a
message changes nothing. Like `progress.apply_line`, `parse_log_line` is pure
and `LogReader` does I/O only in `poll`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fusion_runner.core.progress import Columns, LineReader, Progress, as_count, as_float

MAX_OUTPUTS = 100  # distinct result folders noted per run; more are skipped as problems
MAX_PATH_BYTES = 4096  # PATH_MAX

_PREFIX = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - [^ ]+ - [A-Z]+ - "
# Python prints a float as `300.0` or `1e+16`; digits are bounded so that
# int() never meets a number of a million digits.
_FLOAT = rb"[0-9]{1,20}(?:\.[0-9]{0,20})?(?:e[-+]?[0-9]{1,3})?"
_COUNT = rb"[0-9]{1,12}"
_MESSAGE = re.compile(
    _PREFIX + rb"(?:"
    rb"Starting simulation for (?P<start>" + _FLOAT + rb") Erlang \(load "
    + _COUNT + rb"/(?P<erlangs>" + _COUNT + rb")\)"
    rb"|Iteration (?P<iteration>" + _COUNT + rb") out of (?P<iterations>" + _COUNT
    + rb") completed for Erlang: (?P<erlang>" + _FLOAT + rb")"
    rb"|Saving to: (?P<folder>.*?)"
    rb")\s*\Z"
)


@dataclass(frozen=True)
class LogLine:
    """What one line of FUSION's log says."""

    columns: Columns = field(default_factory=dict)
    saving_to: str | None = None
    problems: tuple[str, ...] = ()


def parse_log_line(line: bytes) -> LogLine | None:
    """What a complete line (without its newline) says; None for a line that says nothing."""
    match = _MESSAGE.match(line)
    if match is None:
        return None
    if match["folder"] is not None:
        return _saving_to(match["folder"])
    if match["start"] is not None:
        values = {"current_erlang": match["start"], "total_erlangs": match["erlangs"]}
    else:
        values = {"current_erlang": match["erlang"], "current_iteration": match["iteration"],
                  "total_iterations": match["iterations"]}
    return _columns(values)


def _columns(values: dict[str, bytes]) -> LogLine:
    columns: Columns = {}
    problems: list[str] = []
    for name, text in values.items():
        value = as_float(float(text)) if name == "current_erlang" else as_count(int(text))
        if value is None:
            problems.append(f"{name}: out of range: {text[:40]!r}")
        else:
            columns[name] = value
    return LogLine(columns, problems=tuple(problems))


def _saving_to(folder: bytes) -> LogLine:
    if not folder:
        return LogLine(problems=("Saving to: no folder",))
    if len(folder) > MAX_PATH_BYTES:
        return LogLine(problems=(f"Saving to: folder longer than {MAX_PATH_BYTES} bytes",))
    try:
        # Strictly: the folder is stored in the database and linked to, and a
        # lossy decoding would name another folder.
        return LogLine(saving_to=folder.decode("utf-8"))
    except UnicodeDecodeError:
        return LogLine(problems=(f"Saving to: not UTF-8: {folder[:40]!r}",))


class LogReader(LineReader):
    """Incremental reader of a run's logs/sim.log, as FUSION writes it.

    Besides the columns it collects each distinct `Saving to:` folder once,
    for `take_outputs`; the folders survive a truncation of the log, so one
    seen again is not reported again.
    """

    def __init__(self, path: Path, *, offset: int = 0, progress: Progress | None = None) -> None:
        super().__init__(path, offset=offset, progress=progress)
        self._outputs: dict[str, None] = {}  # every folder seen, in order (bounded)
        self._new_outputs: list[str] = []

    def take_outputs(self) -> list[str]:
        """The folders first seen since the last call, in the order seen; clears."""
        new, self._new_outputs = self._new_outputs, []
        return new

    def _apply_line(self, line: bytes) -> list[str]:
        parsed = parse_log_line(line)
        if parsed is None:
            return []
        for name, value in parsed.columns.items():
            setattr(self.progress, name, value)
        if parsed.saving_to is not None:
            return self._saw_output(parsed.saving_to)
        return list(parsed.problems)

    def _saw_output(self, folder: str) -> list[str]:
        if folder in self._outputs:
            return []
        if len(self._outputs) >= MAX_OUTPUTS:
            return [f"Saving to: more than {MAX_OUTPUTS} folders, {folder[:80]!r} skipped"]
        self._outputs[folder] = None
        self._new_outputs.append(folder)
        return []
