"""Where a run's progress columns come from: progress.jsonl, FUSION's log, or both.

`progress_source` (SPEC §5, §8):
- "file": progress.jsonl alone; the log is never opened.
- "log": logs/sim.log alone, read as FUSION writes it (`fusionlog`).
- "auto": the log until progress.jsonl has a valid line, then the file alone.
  From that moment the log no longer changes the columns, and the loop stops
  watching and reading it, so that a simulation that writes progress.jsonl
  (the reference simulation) pays next to nothing for the log. At the switch
  all four columns are written as the file has them (NULL for what it has not
  said), so the row is the file's whatever the log said before and however
  the reads fell in time. The rest of the log is read once more when the run
  ends, for its `Saving to:` folders only.

After a restart both readers go on from the offsets stored with the last
progress write: a NULL log offset with a file offset beyond 0 means the file
had taken over (see `resume`).
"""

from __future__ import annotations

from fusion_runner.core.fusionlog import LogReader
from fusion_runner.core.progress import (
    READ_PER_POLL,
    Columns,
    ErlangResult,
    Progress,
    ProgressReader,
)
from fusion_runner.core.rundir import RunPaths


class RunProgress:
    def __init__(self, source: str, file: ProgressReader, log: LogReader | None,
                 *, log_live: bool) -> None:
        self.source = source
        self.file = file
        self.log = log  # None with "file"
        # Whether the log drives the columns (and the loop watches it).
        self.log_live = log is not None and log_live
        # Results of `erlang_complete` events not yet in the database, by Erlang:
        # kept, like unwritten columns, until a write succeeds.
        self.results_unwritten: dict[float, ErlangResult] = {}

    @classmethod
    def start(cls, paths: RunPaths, source: str) -> RunProgress:
        """A run about to be spawned: nothing read yet."""
        log = None if source == "file" else LogReader(paths.log_file)
        return cls(source, ProgressReader(paths.progress_file), log, log_live=True)

    @classmethod
    def resume(cls, paths: RunPaths, source: str, columns: Columns,
               file_offset: int | None, log_offset: int | None) -> RunProgress:
        """A run an earlier daemon followed, read on from where it stopped."""
        file_spoke = log_offset is None and (file_offset or 0) > 0
        log_live = source == "log" or (source == "auto" and not file_spoke)
        # The reader that drives the columns starts from the row; one that did
        # not (the file in "auto" before it spoke) from nothing.
        file = ProgressReader(paths.progress_file, offset=file_offset or 0,
                              progress=Progress() if log_live else _progress(columns))
        log = None
        if source != "file":
            log = LogReader(paths.log_file, offset=(log_offset or 0) if log_live else 0,
                            progress=_progress(columns) if log_live else None)
        return cls(source, file, log, log_live=log_live)

    @property
    def reads_file(self) -> bool:
        return self.source != "log"

    @property
    def file_offset(self) -> int:
        return self.file.offset

    @property
    def log_offset(self) -> int | None:
        """Stored with each progress write; None once the log no longer drives the columns."""
        return self.log.offset if self.log is not None and self.log_live else None

    @property
    def last_error(self) -> str | None:
        return self.file.progress.last_error

    @property
    def problems(self) -> int:
        return self.file.problems + (self.log.problems if self.log is not None else 0)

    @property
    def behind(self) -> bool:
        """The last poll read its share and left the rest for the next."""
        return self.file.behind or (self.log is not None and self.log_live and self.log.behind)

    def poll(self, limit: int | None = READ_PER_POLL) -> Columns:
        """Read what is new in what drives the columns, `limit` bytes of each at most;
        the columns that changed.

        The file's `erlang_complete` results go to `results_unwritten`, whichever
        drives the columns."""
        changed = self.file.poll(limit) if self.reads_file else {}
        for result in self.file.take_results():
            self.results_unwritten[result.erlang] = result
        if self.log is None or not self.log_live:
            return changed
        if self.source == "auto" and self.file.spoken:
            self.log_live = False  # the file has spoken: the log is not read on
            return self.file.progress.columns()
        return self.log.poll(limit)

    def finish(self) -> None:
        """The run has ended: read the log the loop stopped reading, for its folders."""
        if self.log is not None and not self.log_live:
            self.log.poll(limit=None)

    def take_outputs(self) -> list[str]:
        """Result folders the log named for the first time since the last call."""
        return self.log.take_outputs() if self.log is not None else []

    def take_problems(self) -> list[str]:
        notes = self.file.take_problems()
        return notes + (self.log.take_problems() if self.log is not None else [])


def _progress(columns: Columns) -> Progress:
    return Progress(**columns)  # type: ignore[arg-type]
