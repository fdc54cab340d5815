"""What the supervisor knows of one run whose processes may still exist."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fusion_runner.core import outcome, rundir
from fusion_runner.core.progress import Columns
from fusion_runner.core.store import OwnedRun
from fusion_runner.daemon.runprogress import RunProgress
from fusion_runner.executors import local as process
from fusion_runner.executors.local import RunProcess

LOG_TAIL_BYTES = 3072


class StopReason(enum.Enum):
    CANCELLED = "cancelled"
    DELETED = "deleted"
    SHUTDOWN = "shutdown"
    # A client wrote another final status (FAILED, COMPLETED) or one the SPEC
    # does not name: the row keeps it, the processes are stopped as for a cancel.
    CLIENT_STATUS = "client_status"


@dataclass
class LiveRun:
    id: str
    paths: rundir.RunPaths
    process: process.RunProcess
    progress: RunProgress
    adopted: bool = False  # started by an earlier daemon: not our child to reap
    # pid, pgid and started_at are in the row: until then every pass tries again.
    start_recorded: bool = True
    started_at: datetime | None = None
    stop_reason: StopReason | None = None
    client_status: str | None = None  # the status a client wrote, with CLIENT_STATUS
    kill_at: float | None = None
    killed: bool = False
    exited: bool = False
    wait_status: int | None = None
    progress_unread: bool = False  # the file changed since it was last read
    progress_pending: Columns = field(default_factory=dict)
    progress_written_at: float = float("-inf")
    # Result folders the log named that are not in the database yet.
    outputs_unrecorded: list[str] = field(default_factory=list)

    @classmethod
    def adopt(cls, owned: OwnedRun, run_process: RunProcess, runs_dir: Path,
              progress_source: str) -> LiveRun:
        """A run an earlier daemon started, its progress read on from where it stopped."""
        # The runs directory the run was started in, even if the setting changed since.
        base = Path(owned.run_dir).parent if owned.run_dir else runs_dir
        paths = rundir.RunPaths.under(base, owned.id)
        progress = RunProgress.resume(paths, progress_source, owned.progress,
                                      owned.progress_offset, owned.log_offset)
        return cls(owned.id, paths, run_process, progress, adopted=True)

    def unrecoverable(self) -> str:
        """Why an adopted run that ended unwatched has no outcome but FAILED."""
        if not self.process.shim.of_this_boot():
            reused = " (the machine has restarted since)"
        elif not self.process.owns_group:
            reused = " (its pid now belongs to another process)"
        else:
            reused = ""
        return (f"exit status could not be recovered: process {self.process.pid} ended while "
                f"no runner watched{reused} and left no exit record in {self.paths.exit_record}")

    def exit_record(self) -> outcome.ExitRecord | None:
        """The shim's record: from exit.json, else the copy it sent down its status pipe."""
        record = read_exit_record(self.paths)
        if record is not None:
            return record
        piped = process.piped_record(self.process)
        return None if piped is None else outcome.ExitRecord.from_json(piped)

    def log_tail(self) -> str:
        return read_log_tail(self.paths)

    def outcome(self) -> outcome.Outcome:
        """How the run ended, from its exit status; progress only adds to the message."""
        return outcome.decide(
            self.exit_record(), self.wait_status, self.progress.last_error, self.log_tail()
        )


def read_exit_record(paths: rundir.RunPaths) -> outcome.ExitRecord | None:
    try:
        return outcome.ExitRecord.from_json(paths.exit_record.read_text())
    except (OSError, ValueError):
        return None


def read_log_tail(paths: rundir.RunPaths) -> str:
    try:
        with open(paths.log_file, "rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            # One byte more than kept, so that a cut first line can be told and dropped.
            log_file.seek(max(size - LOG_TAIL_BYTES - 1, 0))
            return outcome.tail_text(log_file.read(), LOG_TAIL_BYTES)
    except OSError:
        return ""
