"""The chaos run of tests/integration/test_chaos.py: its plan, its driver and its judge.

A seeded plan of runs (a mix of tests/sims/chaos_sim.py's kinds), cancels and
deletions at random moments; daemons SIGKILLed and restarted at random; a
sampler that looks for RUNNING rows with no live process while it all goes
on; and, at the end, a judge of every row against what its simulation did.
A process belongs to a run when its environment carries the run's
FUSION_RUN_ID (the shim's and every descendant's does), so a reused pid is
never taken for a run's process.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import Client, Daemon

SIM = Path(__file__).parent / "sims" / "chaos_sim.py"
KINDS = ("quick", "fail", "long", "stubborn", "pool", "escaper", "prompt")
RUNS = 200
CANCEL_SHARE, DELETE_SHARE = 0.20, 0.05
MIN_KILLS = 20
SUBMIT_SPREAD = 40.0  # seconds over which the runs are submitted
# A cancel or deletion comes, for a third of them each: up to AT_ONCE s after its
# submit (mostly PENDING, or just claimed), up to ACTION_DELAY s after it, or up to
# RUNNING_DELAY s after the run is first seen RUNNING.
AT_ONCE = 0.1
ACTION_DELAY = 2.0
RUNNING_DELAY = 1.0
LATEST_ACTION = 6.0
UPTIME = (0.5, 3.0)  # a daemon is SIGKILLed this long after its start
DOWNTIME = (0.05, 0.5)  # and started again this long after its kill
SAMPLE_EVERY = 0.2
# How long a ready daemon may take to end a RUNNING run whose processes are
# all gone: more is a run "left RUNNING with no live process".
SETTLE = 1.0
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
NOT_STARTED_AGAIN = "it is not started again"


# --- the plan -------------------------------------------------------------------------------


@dataclass
class PlannedRun:
    run_id: str
    kind: str
    settings: dict[str, str]
    submit_at: float
    action: str | None = None  # "cancel" or "delete"
    # When: `action_at` s after the start of the chaos, or, when `once_running`,
    # `action_at` s after the run is first seen RUNNING (at the latest
    # LATEST_ACTION s after its submit).
    action_at: float = 0.0
    once_running: bool = False

    def config(self) -> dict[str, Any]:
        return {"chaos": {"kind": self.kind, **self.settings}}


def kind_settings(kind: str, rng: random.Random) -> dict[str, str]:
    def seconds(low: float, high: float) -> str:
        return f"{rng.uniform(low, high):.2f}"

    makers: dict[str, Callable[[], dict[str, str]]] = {
        "quick": lambda: {},
        "fail": lambda: {"code": str(rng.randint(1, 9))},
        "long": lambda: {"steps": str(rng.randint(3, 8)), "seconds": seconds(1.0, 3.0),
                         "erlangs": str(rng.randint(1, 3))},
        "stubborn": lambda: {"seconds": seconds(0.3, 2.0)},
        "pool": lambda: {"workers": "2", "seconds": seconds(0.2, 1.0)},
        "escaper": lambda: {"seconds": seconds(0.2, 1.5)},
        "prompt": lambda: {"seconds": seconds(0.5, 3.0)},
    }
    return makers[kind]()


def make_plan(rng: random.Random, marker: Path, runs: int = RUNS) -> list[PlannedRun]:
    plan = []
    for submit_at in sorted(rng.uniform(0, SUBMIT_SPREAD) for _ in range(runs)):
        kind = rng.choice(KINDS)
        settings = {"marker": str(marker), **kind_settings(kind, rng)}
        plan.append(PlannedRun(f"{rng.getrandbits(48):012x}", kind, settings, submit_at))
    chosen = rng.sample(range(runs), round(runs * (CANCEL_SHARE + DELETE_SHARE)))
    cancels = round(runs * CANCEL_SHARE)
    for order, index in enumerate(chosen):
        planned = plan[index]
        planned.action = "cancel" if order < cancels else "delete"
        when = rng.choice(("at once", "later", "once running"))
        planned.once_running = when == "once running"
        if planned.once_running:
            planned.action_at = rng.uniform(0, RUNNING_DELAY)
        else:
            delay = AT_ONCE if when == "at once" else ACTION_DELAY
            planned.action_at = planned.submit_at + rng.uniform(0, delay)
    return plan


# --- talking to either database --------------------------------------------------------------


def _sql(client: Client, statement: str) -> str:
    return statement if type(client) is Client else statement.replace("?", "%s")


def changed_rows(client: Client, statement: str, params: tuple[Any, ...] = ()) -> int:
    """Run a write; how many rows it changed."""
    connection: Any = client.connect()
    try:
        return int(connection.execute(_sql(client, statement), params).rowcount)
    finally:
        connection.close()


def select(client: Client, statement: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    connection: Any = client.connect()
    try:
        rows = connection.execute(_sql(client, statement), params).fetchall()
    finally:
        connection.close()
    return [dict(row) for row in rows]


# --- processes of runs, by their environment ------------------------------------------------


def run_of(pid: int) -> str | None:
    """The FUSION_RUN_ID of a live (not zombie) process; None for any other or a gone one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rpartition(b")")[2].split()[0] == b"Z":
                return None
        with open(f"/proc/{pid}/environ", "rb") as environ:
            variables = environ.read().split(b"\0")
    except (OSError, IndexError):
        return None
    for variable in variables:
        if variable.startswith(b"FUSION_RUN_ID="):
            return variable.partition(b"=")[2].decode(errors="replace")
    return None


def processes_of(run_ids: set[str]) -> dict[str, list[int]]:
    """Every live process on the machine that belongs to one of `run_ids`."""
    found: dict[str, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (run_id := run_of(int(entry))) in run_ids:
            found[run_id].append(int(entry))
    return dict(found)


def processes_after(run_ids: set[str], timeout: float) -> dict[str, list[int]]:
    """The processes of `run_ids` still alive once they are all gone or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while (found := processes_of(run_ids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


# --- the daemons ----------------------------------------------------------------------------


@dataclass
class Host:
    """One daemon under chaos: killed and started again on its own random schedule."""

    daemon: Daemon
    rng: random.Random
    kills: int = 0
    starts: int = 0
    refusals: int = 0  # starts refused because the killed one's lock was still held
    crashes: list[str] = field(default_factory=list)
    kill_at: float | None = None
    start_at: float | None = None
    ready_since: float | None = None
    ready_spans: list[tuple[float, float]] = field(default_factory=list)
    ready_after: list[float] = field(default_factory=list)  # seconds from a start to ready
    _started: float | None = None  # when this host last started its daemon
    _log_offset: int = 0

    @property
    def worker(self) -> str:
        return self.daemon.settings.get("worker-id", "test")

    @property
    def running(self) -> bool:
        return self.daemon.process is not None and self.daemon.process.poll() is None

    def start(self, now: float, chaos: bool) -> None:
        self._read_log()  # what the last one wrote is not this one's ready line
        self.daemon.start(wait_ready=False)
        self._started = now
        self.starts += 1
        self.start_at = None
        self.kill_at = now + self.rng.uniform(*UPTIME) if chaos else None

    def kill(self, now: float) -> None:
        assert self.daemon.process is not None
        self.daemon.process.kill()
        self.daemon.process.wait(10)
        self.kills += 1
        self._end_readiness(now)
        self.kill_at = None
        self.start_at = now + self.rng.uniform(*DOWNTIME)

    def tick(self, now: float, chaos: bool) -> None:
        if self.daemon.process is not None and self.start_at is None and not self.running:
            self._exited_by_itself(now)
        if self.running and self.ready_since is None and "action=ready" in self._read_log():
            self.ready_since = now
            if self._started is not None:
                self.ready_after.append(now - self._started)
        if chaos and self.kill_at is not None and now >= self.kill_at and self.running:
            self.kill(now)
        elif self.start_at is not None and now >= self.start_at:
            self.start(now, chaos)

    def calm(self, now: float) -> None:
        """No more kills: the daemon serves until the end."""
        self.kill_at = None
        if not self.running:
            self.start(now, chaos=False)

    def spans(self, now: float) -> list[tuple[float, float]]:
        """When this host had a ready daemon, up to now."""
        current = [] if self.ready_since is None else [(self.ready_since, now)]
        return self.ready_spans + current

    def _exited_by_itself(self, now: float) -> None:
        assert self.daemon.process is not None
        code = self.daemon.process.returncode
        news = self._read_log()
        self._end_readiness(now)
        if code == 2 and "already serves worker_id" in news:
            self.refusals += 1  # the killed daemon's lock outlived it for a moment
        else:
            self.crashes.append(f"daemon {self.worker} exited by itself ({code}): {news[-2000:]}")
        self.start_at = now + 0.1

    def _end_readiness(self, now: float) -> None:
        if self.ready_since is not None:
            self.ready_spans.append((self.ready_since, now))
        self.ready_since = None

    def _read_log(self) -> str:
        """The log's complete lines written since the last read."""
        try:
            with open(self.daemon.log, "rb") as log:
                log.seek(self._log_offset)
                data = log.read()
        except FileNotFoundError:
            return ""
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        return complete.decode(errors="replace")


# --- the sampler ----------------------------------------------------------------------------


@dataclass
class Episode:
    """A RUNNING row seen without a live process, from `first` to `last` sample."""

    first: float
    last: float
    owner: str | None
    reported: bool = False


@dataclass
class Sampler:
    samples: int = 0
    episodes: int = 0
    longest_unsettled: float = 0.0  # the longest such time within one ready span of its owner
    violations: list[str] = field(default_factory=list)
    _open: dict[str, Episode] = field(default_factory=dict)

    def sample(self, client: Client, hosts: list[Host], now: float) -> set[str]:
        """Look once; the ids of the RUNNING rows."""
        rows = select(client, "SELECT r.id, r.pid, c.worker_id FROM runs r "
                              "LEFT JOIN fusion_runner_claims c ON c.run_id = r.id "
                              "WHERE r.status = 'RUNNING'")
        self.samples += 1
        suspects = {row["id"]: row["worker_id"] for row in rows
                    if row["pid"] is None or run_of(int(row["pid"])) != row["id"]}
        for run_id in list(self._open):
            if run_id not in suspects:
                del self._open[run_id]
        for run_id, owner in suspects.items():
            episode = self._open.get(run_id)
            if episode is None:
                self.episodes += 1
                self._open[run_id] = Episode(now, now, owner)
                continue
            episode.last = now
            self._judge(run_id, episode, hosts, now)
        return {row["id"] for row in rows}

    def _judge(self, run_id: str, episode: Episode, hosts: list[Host], now: float) -> None:
        owners = [host for host in hosts if host.worker == episode.owner] or hosts
        unsettled = max(
            (min(end, episode.last) - max(begin, episode.first)
             for host in owners for begin, end in host.spans(now)),
            default=0.0,
        )
        self.longest_unsettled = max(self.longest_unsettled, unsettled)
        if unsettled >= SETTLE and not episode.reported:
            episode.reported = True
            self.violations.append(
                f"run {run_id} RUNNING with no live process for {unsettled:.2f}s while its "
                f"daemon ({episode.owner}) was ready")


# --- the driver -----------------------------------------------------------------------------


@dataclass
class Moves:
    """What the client side did."""

    cancels: int = 0
    # The status each cancel and deletion found: a cancel of a final run changes nothing.
    found: collections.Counter[str] = field(default_factory=collections.Counter)
    cancels_taken: set[str] = field(default_factory=set)  # found PENDING or RUNNING
    # Cancelled or deleted while PENDING: never to be started.
    taken_pending: set[str] = field(default_factory=set)
    deletions: set[str] = field(default_factory=set)


def cancel(client: Client, run_id: str) -> str:
    """Cancel as a careful GUI does (never over a final status); the status it found."""
    for status in ("PENDING", "RUNNING"):
        if changed_rows(client, "UPDATE runs SET status = 'CANCELLED' WHERE id = ? "
                                "AND status = ?", (run_id, status)):
            return status
    return "final"


def delete(client: Client, run_id: str) -> str:
    """Delete the row whatever its status; the status it had."""
    rows = select(client, "DELETE FROM runs WHERE id = ? RETURNING status", (run_id,))
    return str(rows[0]["status"]) if rows else "gone"


def act(client: Client, planned: PlannedRun, moves: Moves) -> None:
    if planned.action == "cancel":
        moves.cancels += 1
        found = cancel(client, planned.run_id)
        if found != "final":
            moves.cancels_taken.add(planned.run_id)
    elif planned.action == "delete":
        moves.deletions.add(planned.run_id)
        found = delete(client, planned.run_id)
    else:
        return
    moves.found[f"{planned.action} {found}"] += 1
    if found == "PENDING":
        moves.taken_pending.add(planned.run_id)


def open_runs(client: Client) -> int:
    rows = select(client, "SELECT COUNT(*) AS n FROM runs WHERE completed_at IS NULL "
                          "OR status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')")
    return int(rows[0]["n"])


class Actions:
    """The cancels and deletions still to come, each due at its moment."""

    def __init__(self, plan: list[PlannedRun]) -> None:
        self.due = [(p.action_at, p) for p in plan if p.action and not p.once_running]
        self.awaiting = {p.run_id: p for p in plan if p.action and p.once_running}

    def __bool__(self) -> bool:
        return bool(self.due or self.awaiting)

    def seen_running(self, running: set[str], elapsed: float) -> None:
        """Schedule those waiting for their run to be RUNNING (or for too long)."""
        for run_id, planned in list(self.awaiting.items()):
            if run_id in running or elapsed > planned.submit_at + LATEST_ACTION:
                self.due.append((elapsed + planned.action_at, planned))
                del self.awaiting[run_id]

    def take_due(self, elapsed: float) -> list[PlannedRun]:
        taken = [planned for at, planned in self.due if at <= elapsed]
        self.due = [(at, planned) for at, planned in self.due if at > elapsed]
        return taken


def drive(client: Client, hosts: list[Host], plan: list[PlannedRun], sampler: Sampler,
          moves: Moves, time_limit: float) -> list[str]:
    """Submit, cancel, delete and kill as planned; then let every run end (the judge
    tells which did not, if the time runs out). What went wrong with the time."""
    begun = time.monotonic()
    deadline = begun + time_limit
    submits = collections.deque(plan)
    actions = Actions(plan)
    for host in hosts:
        host.kill_at = begun + host.rng.uniform(*UPTIME)
    next_sample = begun

    def chaos_over() -> bool:
        return (not submits and not actions
                and all(host.kills >= MIN_KILLS // len(hosts) for host in hosts)
                and sum(host.kills for host in hosts) >= MIN_KILLS)

    while not chaos_over():
        now = time.monotonic()
        if now > deadline:
            return [f"the chaos did not end within {time_limit:.0f}s"]
        while submits and now - begun >= submits[0].submit_at:
            planned = submits.popleft()
            client.submit(planned.config(), run_id=planned.run_id, name=planned.kind)
        for planned in actions.take_due(now - begun):
            act(client, planned, moves)
        for host in hosts:
            host.tick(now, chaos=True)
        if now >= next_sample:
            actions.seen_running(sampler.sample(client, hosts, now), now - begun)
            next_sample = now + SAMPLE_EVERY
        time.sleep(0.01)
    for host in hosts:
        host.calm(time.monotonic())
    while open_runs(client):
        now = time.monotonic()
        if now > deadline:
            return [f"the runs did not all end within {time_limit:.0f}s"]
        for host in hosts:
            host.tick(now, chaos=False)
        sampler.sample(client, hosts, now)
        time.sleep(SAMPLE_EVERY)
    return []


# --- the judge ------------------------------------------------------------------------------


def expected_progress(progress_file: Path) -> dict[str, Any]:
    """The progress columns as the simulation's events, in order, set them."""
    columns: dict[str, Any] = {}
    mapping = {"erlang": "current_erlang", "iteration": "current_iteration",
               "total_iterations": "total_iterations", "total_erlangs": "total_erlangs"}
    with contextlib.suppress(FileNotFoundError):
        for line in progress_file.read_text().splitlines():
            event = json.loads(line)
            columns |= {column: event[key] for key, column in mapping.items() if key in event}
    return columns


@dataclass
class Verdicts:
    violations: list[str] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    not_started_again: int = 0

    def add(self, planned: PlannedRun, problem: str) -> None:
        self.violations.append(f"run {planned.run_id} ({planned.kind}, "
                               f"{planned.action or 'left alone'}): {problem}")


def judge_row(planned: PlannedRun, row: dict[str, Any] | None, starts: int, moves: Moves,
              run_dir: Path | None, verdicts: Verdicts) -> None:
    if starts > 1:
        verdicts.add(planned, f"spawned {starts} times")
    if starts and planned.run_id in moves.taken_pending:
        verdicts.add(planned, f"{planned.action} found it PENDING, yet it was started")
    if planned.run_id in moves.deletions:
        if row is not None:
            verdicts.add(planned, f"deleted, yet its row is back: {row['status']}")
        verdicts.statuses["(deleted)"] += 1
        return
    if row is None:
        verdicts.add(planned, "its row is gone")
        return
    status, message = row["status"], row["error_message"]
    verdicts.statuses[status] += 1
    if status not in FINAL or row["completed_at"] is None:
        verdicts.add(planned, f"not final: {status}, completed_at {row['completed_at']}")
    elif status != "CANCELLED" and starts and None in (row["pid"], row["pgid"],
                                                       row["started_at"]):
        verdicts.add(planned, f"ran, yet pid {row['pid']}, pgid {row['pgid']}, "
                              f"started_at {row['started_at']}")
    elif planned.run_id in moves.cancels_taken:
        if (status, message) != ("CANCELLED", None):
            verdicts.add(planned, f"cancelled, yet {status}: {message!r}")
    elif status == "FAILED" and NOT_STARTED_AGAIN in (message or ""):
        verdicts.not_started_again += 1
        if starts:
            verdicts.add(planned, f"said not started, yet it ran: {message!r}")
    elif planned.kind == "fail":
        code = planned.settings["code"]
        if status != "FAILED" or not (message or "").startswith(f"exit code {code}"):
            verdicts.add(planned, f"exited with {code}, yet {status}: {message!r}")
    elif (status, message) != ("COMPLETED", None) or starts != 1:
        verdicts.add(planned, f"should have completed, yet {status}: {message!r}, "
                              f"started {starts} times")
    elif planned.kind == "long":
        expected = {} if run_dir is None else expected_progress(run_dir / "progress.jsonl")
        actual = {column: row[column] for column in expected}
        if expected.get("current_iteration") != int(planned.settings["steps"]):
            verdicts.add(planned, f"completed, yet its progress file is short: {expected}")
        elif actual != expected:
            verdicts.add(planned, f"progress columns {actual}, its last events {expected}")


def spawned_in(run_dir: Path) -> bool:
    """Whether a spawn of the run's shim began in this folder (its marker is written first)."""
    return (run_dir / ".spawned").exists()


def judge(client: Client, hosts: list[Host], plan: list[PlannedRun], moves: Moves,
          marker: Path) -> Verdicts:
    verdicts = Verdicts()
    rows = {row["id"]: row for row in select(client, "SELECT * FROM runs")}
    starts = collections.Counter(marker.read_text().split()) if marker.exists() else {}
    for planned in plan:
        # A daemon killed while laying out a run's folder leaves it behind when the
        # run is requeued and another daemon takes it: only one may have spawned it.
        dirs = [d for host in hosts if spawned_in(d := host.daemon.run_dir(planned.run_id))]
        if len(dirs) > 1:
            verdicts.add(planned, f"spawned by {len(dirs)} daemons")
        judge_row(planned, rows.get(planned.run_id), starts.get(planned.run_id, 0), moves,
                  dirs[0] if dirs else None, verdicts)
    planned_ids = {planned.run_id for planned in plan}
    for stranger in set(rows) - planned_ids:
        verdicts.violations.append(f"a row nobody submitted: {stranger}")
    return verdicts


def start_delays(client: Client) -> dict[str, float]:
    """Seconds from submit to spawn of the runs that started: p50, p90, max."""
    delays = []
    for row in select(client, "SELECT created_at, started_at FROM runs "
                              "WHERE started_at IS NOT NULL"):
        created, started = (value if isinstance(value, datetime) else
                            datetime.fromisoformat(value)
                            for value in (row["created_at"], row["started_at"]))
        delays.append((started - created).total_seconds())
    delays.sort()
    if not delays:
        return {}
    return {"p50": round(delays[len(delays) // 2], 2),
            "p90": round(delays[len(delays) * 9 // 10], 2), "max": round(delays[-1], 2)}


def report(path: Path, database: str, figures: dict[str, Any]) -> None:
    """Add this database's figures to the JSON report at `path` (one key per database)."""
    existing: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        existing = json.loads(path.read_text())
    existing[database] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")

