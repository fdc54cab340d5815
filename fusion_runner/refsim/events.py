"""progress.jsonl: SPEC §5 typed events, one JSON object a line, flushed line by line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO


class ProgressFile:
    """Appends events; each carries `timestamp` (time.time()) and is flushed at once."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> ProgressFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._file.close()

    def emit(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields, "timestamp": time.time()})
        self._file.write(line + "\n")
        self._file.flush()

    def start(self, total_erlangs: int, total_iterations: int) -> None:
        totals = {"total_erlangs": total_erlangs, "total_iterations": total_iterations}
        self.emit("start", config=totals, **totals)

    def erlang_start(self, erlang: float, index: int, total_erlangs: int) -> None:
        self.emit("erlang_start", erlang=erlang, erlang_index=index, total_erlangs=total_erlangs)

    def iteration(self, erlang: float, iteration: int, total: int, blocking: float) -> None:
        self.emit(
            "iteration", erlang=erlang, iteration=iteration, total_iterations=total,
            metrics={"blocking_prob": blocking},
        )

    def erlang_complete(self, erlang: float, mean: float, lower: float, upper: float) -> None:
        metrics = {"mean_blocking": mean, "ci_lower": lower, "ci_upper": upper}
        self.emit("erlang_complete", erlang=erlang, metrics=metrics)

    def complete(self, summary: dict[str, Any]) -> None:
        self.emit("complete", exit_code=0, summary=summary)

    def error(self, message: str, traceback: str = "", **fields: Any) -> None:
        self.emit("error", message=message, traceback=traceback, **fields)
