"""SlurmExecutor: each run is a Slurm job running the same shim as locally.

The daemon, on a login or service node, submits with `sbatch` and follows its
jobs with one `squeue` for all of them per look (at most every
`slurm_poll_seconds`), never a command per run. The job's shim writes, on
the node: `started.json` when it starts (its pid, group, host, start ticks),
the log, `progress.jsonl` and `exit.json` into the run directory on the shared
file system, where the daemon reads them. Slurm's own view covers what the
shim cannot say: a job cancelled or failed in the queue, a node failure, a
time limit, out of memory. A requeued job (preemption, `scontrol requeue`) is
the same run: its earlier attempt's records are set aside.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fusion_runner.core import exitrecord, outcome
from fusion_runner.core.config import Config
from fusion_runner.core.rundir import RunPaths
from fusion_runner.core.runrecords import OwnedRun
from fusion_runner.core.status import RunStatus
from fusion_runner.executors import base
from fusion_runner.executors.base import EndedUnrecorded, RunHandle, Verdict
from fusion_runner.executors.local import SHIM_PATH
from fusion_runner.executors.slurmjobs import (
    ACTIVE_STATES,
    QUEUED_STATES,
    SQUEUE_FIELDS,
    JobState,
    job_resources,
    limit_seconds,
    parse_squeue,
)

log = logging.getLogger("fusion_runner")
STARTED_FILE = "started.json"
JOB_SCRIPT = "job.sh"
# The job's batch script: the shim, exec'd with the arguments sbatch passes on.
_SCRIPT = '#!/bin/sh\n# Written by fusion-runner: the run\'s shim, as a Slurm job.\nexec "$@"\n'
COMMAND_TIMEOUT = 30
# Seconds before the time limit when the shim is asked to stop the simulation.
SIGNAL_BEFORE_LIMIT = 60
# How much earlier than asked Slurm may send that signal (its timer's resolution: the
# sbatch manual says up to 60 s), and some more.
SIGNAL_EARLY_BY = 65
# States in which the run did not end by itself: the outcome names them.
FAILING_STATES = {"TIMEOUT": "time limit reached", "NODE_FAIL": "node failure",
                  "OUT_OF_MEMORY": "out of memory", "PREEMPTED": "preempted",
                  "BOOT_FAIL": "node boot failure", "DEADLINE": "deadline reached",
                  "CANCELLED": "cancelled in Slurm (scancel)"}


@dataclass
class SlurmJob:
    """One run's job, as the daemon last saw it."""

    run_id: str
    job_id: str
    paths: RunPaths
    started: base.Identity | None = None
    attempt: int = 0  # Slurm's restart count of the attempt `started` describes
    state: JobState | None = None  # None: not in squeue (not looked at yet, or ended)
    # A look taken after its submission gave `state`: once looked at, a job squeue
    # does not list has ended (slurmctld forgets jobs MinJobAge after their end).
    looked: bool = False

    @property
    def current_attempt(self) -> int:
        return self.state.restarts if self.state is not None else self.attempt

    @property
    def pid(self) -> int:
        return self.started.pid if self.started is not None else 0

    @property
    def pgid(self) -> int:
        return self.started.pgid if self.started is not None else 0


class SlurmError(RuntimeError):
    """A Slurm command failed; the message is its own."""


class SlurmExecutor:
    queues: bool = True
    poll_seconds: float | None

    def __init__(self, config: Config) -> None:
        self.config = config
        self.poll_seconds = config.slurm_poll_seconds
        self._jobs: dict[str, SlurmJob] = {}  # by job id
        self._polled_at = float("-inf")
        self._states: dict[str, JobState] | None = None  # every job of ours, at the last look
        self._user = getpass.getuser()

    @classmethod
    def from_config(cls, config: Config) -> SlurmExecutor:
        return cls(config)

    # --- submitting --------------------------------------------------------------------

    def spawn(self, paths: RunPaths, argv: list[str], env: dict[str, str]) -> RunHandle:
        script = paths.run_dir / JOB_SCRIPT
        script.write_text(_SCRIPT)
        script.chmod(0o755)
        paths.spawn_marker.touch()
        command = [*self._sbatch_options(paths), str(script), *self._shim_argv(paths), "--",
                   *argv]
        job_id = self._run(command, env=env).strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {job_id!r}")
        job = SlurmJob(paths.run_id, job_id, paths)
        self._jobs[job_id] = job
        self._polled_at = float("-inf")  # look soon: it may start at once
        return job

    def _sbatch_options(self, paths: RunPaths) -> list[str]:
        options = ["sbatch", "--parsable", f"--job-name=fusion-{paths.run_id}",
                   f"--chdir={paths.run_dir}", f"--output={paths.log_file}",
                   "--open-mode=append", f"--signal=B:TERM@{SIGNAL_BEFORE_LIMIT}"]
        if self.config.slurm_partition:
            options.append(f"--partition={self.config.slurm_partition}")
        if self.config.slurm_account:
            options.append(f"--account={self.config.slurm_account}")
        if self.config.slurm_time_limit:
            options.append(f"--time={self.config.slurm_time_limit}")
        options += job_resources(paths.config_file)
        return [*options, *self.config.slurm_extra_args]

    def _shim_argv(self, paths: RunPaths) -> list[str]:
        return [sys.executable, "-I", "-S", SHIM_PATH, "--run-dir", str(paths.run_dir),
                "--record", str(paths.exit_record), "--grace", repr(self.config.stop_grace_seconds),
                "--started", str(paths.run_dir / STARTED_FILE), "--forward-term"]

    # --- looking -------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """One squeue for every job of ours, at most every poll_seconds."""
        now = time.monotonic()
        if not self._jobs or (not force and now < self._polled_at + (self.poll_seconds or 0)):
            return  # no job to look at (an idle daemon runs no squeue), or looked lately
        self._polled_at = now
        text = self._run(["squeue", "--noheader", "--states=all", f"--user={self._user}",
                          "-O", SQUEUE_FIELDS])
        self._states = parse_squeue(text)
        for job in self._jobs.values():
            job.state, job.looked = self._states.get(job.job_id), True

    def _job(self, handle: RunHandle) -> SlurmJob:
        if not isinstance(handle, SlurmJob):
            raise TypeError(f"not a Slurm job: {handle!r}")
        return handle

    def _ended(self, job: SlurmJob) -> bool:
        if job.state is None:
            return job.looked or _record_of(job.paths, job.current_attempt) is not None
        return job.state.name not in ACTIVE_STATES

    def _left_queue(self, job: SlurmJob) -> bool:
        """Whether the look says the job's current attempt started (or ended)."""
        if job.state is None:
            return self._ended(job)
        return job.state.name not in QUEUED_STATES

    # Every method below but `reap`, `look` and `find_unrecorded` answers from the last
    # look (squeue) without looking again, so that one pass sees one state of the
    # cluster: a run is taken for started only once the look that shows it running
    # also shows the end of the run whose place it took (never more RUNNING rows
    # than jobs Slurm runs).

    def identity(self, handle: RunHandle) -> base.Identity | None:
        job = self._job(handle)
        if job.current_attempt > job.attempt:
            # Requeued: what the earlier attempt wrote is set aside, never taken for
            # the new attempt's.
            _set_aside(job.paths, job.current_attempt)
            job.started, job.attempt = None, job.current_attempt
        if job.started is None and self._left_queue(job):
            job.started = _read_started(job.paths.run_dir / STARTED_FILE, job.attempt)
        return job.started

    def queue_name(self, handle: RunHandle) -> str | None:
        return self._job(handle).job_id

    def queue_reason(self, handle: RunHandle) -> str | None:
        state = self._job(handle).state
        return state.reason if state is not None and state.name == "PENDING" else None

    def requeued(self, handle: RunHandle) -> bool:
        # True until `identity` takes up the new attempt: a failed write of the
        # requeue is tried again.
        job = self._job(handle)
        return job.started is not None and job.current_attempt > job.attempt

    def reap(self, children: list[RunHandle]) -> list[tuple[RunHandle, int | None]]:
        self._refresh()
        return [(child, None) for child in children if self._ended(self._job(child))]

    def is_alive(self, handle: RunHandle) -> bool:
        return not self._ended(self._job(handle))

    def tree_gone(self, handle: RunHandle) -> bool:
        # Slurm ends every process of the job (KillWait, then SIGKILL) before
        # the job leaves COMPLETING.
        return self._ended(self._job(handle))

    def look(self, handle: RunHandle) -> base.Sight:
        # Reconcile looks at every run: one squeue for them all (see `from_row`).
        job = self._job(handle)
        self._refresh()
        if not job.looked:
            self._refresh(force=True)
        verdict = Verdict.GONE if self._ended(job) else Verdict.ALIVE
        return _Sight(verdict)

    # --- stopping ------------------------------------------------------------------------

    def terminate(self, handle: RunHandle) -> None:
        # Queued: it never starts. Running: SIGTERM to every process of the job,
        # SIGKILL after Slurm's KillWait.
        self._scancel(self._job(handle), [])

    def kill(self, handle: RunHandle) -> None:
        self._scancel(self._job(handle), ["--signal=KILL", "--full"])

    def _scancel(self, job: SlurmJob, options: list[str]) -> None:
        try:
            self._run(["scancel", *options, job.job_id])
        except SlurmError as error:
            log.warning("run=%s action=scancel_failed job=%s error=%s", job.run_id,
                        job.job_id, error)
        self._polled_at = float("-inf")  # see the end at the next pass

    # --- outcomes ------------------------------------------------------------------------

    def outcome(self, handle: RunHandle, paths: RunPaths, wait_status: int | None,
                last_error: str | None, *, watched: bool) -> outcome.Outcome:
        job = self._job(handle)
        state = job.state
        if state is not None and state.name in FAILING_STATES:
            return outcome.Outcome(RunStatus.FAILED, (
                f"Slurm job {job.job_id} {state.name}: {FAILING_STATES[state.name]}"
                f"{_reason(state)}"))
        fields = _record_of(paths, job.current_attempt)
        record = exitrecord.read(paths.exit_record) if fields is not None else None
        if record is not None and fields is not None:
            result = outcome.decide(record, None, last_error, exitrecord.log_tail(paths.log_file))
            stopped = _stopped_by_slurm(job, fields)
            if stopped and result.status != RunStatus.COMPLETED:
                # Slurm's SIGTERM before the time limit ended it: the job ends by
                # itself (COMPLETED or FAILED in Slurm), the cause is the limit.
                return outcome.Outcome(RunStatus.FAILED, (
                    f"Slurm job {job.job_id} {stopped}: {result.error_message}"))
            return result
        name = state.name if state is not None else "gone from squeue"
        if job.started is None:
            return outcome.Outcome(RunStatus.FAILED, (
                f"Slurm job {job.job_id} ended before it started ({name}{_reason(state)})"))
        return outcome.Outcome(RunStatus.FAILED, (
            f"Slurm job {job.job_id} ended ({name}{_reason(state)}) and left no exit record "
            f"in {paths.exit_record}"))

    def outcome_unrecorded(self, paths: RunPaths, last_error: str | None) -> EndedUnrecorded:
        record = exitrecord.read(paths.exit_record)
        if record is None:
            return EndedUnrecorded(outcome.Outcome(RunStatus.FAILED, (
                "the runner stopped while submitting this run and no job of it is left; "
                "it is not submitted again, so that it never runs twice")), None, None)
        result = outcome.decide(record, None, last_error, exitrecord.log_tail(paths.log_file))
        return EndedUnrecorded(result, record.shim_pid, None)

    # --- what a restarted daemon finds ---------------------------------------------------

    def from_row(self, owned: OwnedRun) -> RunHandle | None:
        """The job by the id recorded in the claim: re-attached, never resubmitted."""
        if owned.job_id is None:
            return None
        base_dir = Path(owned.run_dir).parent if owned.run_dir else self.config.runs_dir
        job = SlurmJob(owned.id, owned.job_id, RunPaths.under(base_dir, owned.id))
        if owned.pid is not None and owned.pgid is not None:
            job.started = base.Identity(owned.pid, owned.pgid, owned.process_start_ticks,
                                        owned.boot_id, None)
            # The attempt the row's pid is of: that of started.json, unless a later
            # attempt wrote it (requeued while no daemon watched: `requeued` says so).
            started = job.paths.run_dir / STARTED_FILE
            job.attempt = _attempt_of(started)
            if _pid_of(started) not in (None, owned.pid):
                job.attempt = max(job.attempt - 1, 0)
        if self._states is not None:
            # Submitted before this daemon looked: the last look shows it, or it ended.
            job.state, job.looked = self._states.get(job.job_id), True
        self._jobs[job.job_id] = job
        return job

    def find_unrecorded(self, run_id: str) -> RunHandle | None:
        self._refresh(force=True)
        text = self._run(["squeue", "--noheader", "--states=all", f"--user={self._user}",
                          f"--name=fusion-{run_id}", "-O", SQUEUE_FIELDS])
        for job_id, state in parse_squeue(text).items():
            if state.name in ACTIVE_STATES:
                paths = RunPaths.under(self.config.runs_dir, run_id)
                job = SlurmJob(run_id, job_id, paths, state=state, looked=True)
                self._jobs[job_id] = job
                return job
        return None

    def left_a_trace(self, paths: RunPaths) -> bool:
        return any(path.exists() for path in (paths.spawn_marker, paths.exit_record,
                                               paths.log_file, paths.progress_file))

    def may_hide(self, paths: RunPaths) -> str | None:
        return None  # squeue sees every job of ours

    def upgrade_identity(self, handle: RunHandle) -> base.Identity | None:
        return None

    def note_ended_unwatched(self, handle: RunHandle, verdict: Verdict) -> None:
        return None

    def become_reaper(self) -> None:
        return None  # the jobs are Slurm's children, not ours

    def end_watch_pid(self, handle: RunHandle) -> int | None:
        return None  # no local process: the passes look (poll_seconds)

    def release(self, handle: RunHandle) -> None:
        self._jobs.pop(self._job(handle).job_id, None)

    def reconfigure(self, config: Config) -> None:
        self.config = config

    # --- commands --------------------------------------------------------------------------

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        """A Slurm command's output; SlurmError with its own message when it fails."""
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                  env=env, stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SlurmError(f"{argv[0]}: {error}") from None
        if done.returncode != 0:
            message = _message(argv[0], done.stderr or done.stdout) or f"exit {done.returncode}"
            raise SlurmError(f"{argv[0]}: {message}")
        return done.stdout


@dataclass(frozen=True)
class _Sight:
    verdict: Verdict
    why: str = ""


def _read_started(path: Path, attempt: int) -> base.Identity | None:
    """The started record of that attempt; None if there is none (yet)."""
    try:
        fields = json.loads(path.read_text())
        if int(fields.get("attempt", 0)) != attempt:
            return None
        return base.Identity(int(fields["pid"]), int(fields["pgid"]), fields.get("start_ticks"),
                             fields.get("boot_id"), None, node=str(fields.get("host") or ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _attempt_of(path: Path) -> int:
    """The attempt (Slurm's restart count) a started or exit record was written in."""
    try:
        return int(json.loads(path.read_text()).get("attempt", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _pid_of(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _record_of(paths: RunPaths, attempt: int) -> dict[str, object] | None:
    """The exit record's fields if that attempt wrote it (an earlier attempt's, written
    late, is not this one's); None if there is none."""
    try:
        fields = json.loads(paths.exit_record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict) or fields.get("attempt", 0) != attempt:
        return None
    return fields


def _stopped_by_slurm(job: SlurmJob, fields: dict[str, object]) -> str | None:
    """How to name a SIGTERM that the shim passed on to the simulation: Slurm's warning
    before the time limit (`--signal`), or another's; None if the shim passed none on."""
    term_after = fields.get("term_after")
    if not isinstance(term_after, int | float) or isinstance(term_after, bool):
        return None
    when = f"SIGTERM from Slurm after {term_after:.0f} s"
    text = job.state.time_limit if job.state is not None else ""
    limit = limit_seconds(text)
    if limit is None:
        return f"stopped by {when} (its time limit, or an operator's signal)"
    if term_after >= limit - SIGNAL_BEFORE_LIMIT - SIGNAL_EARLY_BY:
        return f"TIMEOUT: stopped at its time limit of {text} ({when}, the warning before it)"
    return f"stopped by {when}, before its time limit of {text}"


def _set_aside(paths: RunPaths, attempt: int) -> None:
    """Rename what attempts before `attempt` left (started.json, exit.json)."""
    for path in (paths.run_dir / STARTED_FILE, paths.exit_record):
        earlier = _attempt_of(path)
        if path.exists() and earlier < attempt:
            with contextlib.suppress(OSError):
                path.rename(path.with_name(f"{path.name}.attempt-{earlier}"))


def _message(command: str, text: str) -> str:
    """A Slurm command's complaint on one line, without the `sbatch: error: ` each of its
    lines starts with."""
    lines = []
    for line in text.splitlines():
        line = " ".join(line.split())
        for prefix in (f"{command}: ", "error: "):
            line = line.removeprefix(prefix)
        if line:
            lines.append(line)
    return "; ".join(lines)


def _reason(state: JobState | None) -> str:
    if state is None or not state.reason or state.reason == "None":
        return ""
    return f", reason {state.reason}"


