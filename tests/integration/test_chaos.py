"""Chaos: 200 runs of misbehaving simulations, cancels and deletions at random
moments, while every daemon is SIGKILLed and started again every 0.5-3 s.

Nothing may be lost: every run ends final, none is spawned twice, each
status says what its simulation did (or its cancel), progress columns hold
each completed run's last event, no process of a run is left, and no RUNNING
row is left without a live process while its daemon is there to see it.
The plan comes from a seed: `--chaos-seed N` or FUSION_RUNNER_CHAOS_SEED=N
replays one; by default a new one is drawn and printed. The figures of each
run go to chaos-report.json in the test's folder, and to the file named by
FUSION_RUNNER_CHAOS_REPORT when it is set (docs/reliability.md quotes them).
"""

from __future__ import annotations

import collections
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import chaos
from tests.conftest import Client, Daemon

pytestmark = pytest.mark.slow
TIME_LIMIT = 200.0  # the bound of one chaos run; it takes ~45 s on this 2-core machine
SETTINGS = {"sim_command": f"{{python}} {chaos.SIM}", "stop_grace_seconds": "2"}


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    given = request.config.getoption("--chaos-seed")
    if given is None and os.environ.get("FUSION_RUNNER_CHAOS_SEED"):
        given = int(os.environ["FUSION_RUNNER_CHAOS_SEED"])
    chosen = random.SystemRandom().randrange(2**32) if given is None else int(given)
    print(f"chaos seed {chosen} (replay: --chaos-seed {chosen})")
    return chosen


def run_chaos(database: str, seed: int, client: Client, daemons: list[Daemon],
              tmp_path: Path) -> None:
    rng = random.Random(f"{database}:{seed}")  # one seed, two plans (and two sets of ids)
    marker = tmp_path / "marker"
    plan = chaos.make_plan(rng, marker)
    hosts = [chaos.Host(daemon, random.Random(rng.random())) for daemon in daemons]
    sampler, moves = chaos.Sampler(), chaos.Moves()
    begun = time.monotonic()
    late = chaos.drive(client, hosts, plan, sampler, moves, TIME_LIMIT)
    verdicts = chaos.judge(client, hosts, plan, moves, marker)
    run_ids = {planned.run_id for planned in plan}
    left = chaos.processes_of(run_ids - moves.deletions)  # final rows: nothing may be left
    # A deleted row says nothing of its processes: those being stopped get the grace.
    left |= chaos.processes_after(moves.deletions, 15.0)
    problems = [*late, *sampler.violations, *verdicts.violations,
                *(f"run {run_id} left processes {pids}" for run_id, pids in left.items()),
                *(crash for host in hosts for crash in host.crashes)]
    figures = {"database": database, "seed": seed, "runs": len(plan),
               **figures_of(hosts, plan, moves, sampler, verdicts, begun),
               "submit_to_spawn_seconds": chaos.start_delays(client),
               "violations": len(problems),
               "duration_seconds": round(time.monotonic() - begun, 1)}
    chaos.report(tmp_path / "chaos-report.json", database, figures)
    if os.environ.get("FUSION_RUNNER_CHAOS_REPORT"):
        chaos.report(Path(os.environ["FUSION_RUNNER_CHAOS_REPORT"]), database, figures)
    print(figures)
    assert problems == [], (
        f"chaos seed {seed} (replay: --chaos-seed {seed}): {len(problems)} violations\n"
        + "\n".join(problems[:40]))
    assert figures["kills"] >= chaos.MIN_KILLS


def figures_of(hosts: list[chaos.Host], plan: list[chaos.PlannedRun], moves: chaos.Moves,
               sampler: chaos.Sampler, verdicts: chaos.Verdicts, begun: float) -> dict[str, Any]:
    """What the chaos did, for the report (docs/reliability.md quotes it)."""
    now = time.monotonic()
    ready = sum(end - start for host in hosts for start, end in host.spans(now))
    return {
        "daemons": len(hosts), "kills": sum(host.kills for host in hosts),
        "starts": sum(host.starts for host in hosts),
        "lock_refusals": sum(host.refusals for host in hosts),
        "start_to_ready_seconds_mean": round(statistics.fmean(
            [after for host in hosts for after in host.ready_after] or [0.0]), 2),
        "ready_share": round(ready / len(hosts) / (now - begun), 2),
        "cancels": moves.cancels, "cancels_taken": len(moves.cancels_taken),
        "deletions": len(moves.deletions), "found_by_moves": dict(sorted(moves.found.items())),
        "kinds": dict(sorted(collections.Counter(p.kind for p in plan).items())),
        "statuses": dict(sorted(verdicts.statuses.items())),
        "not_started_again": verdicts.not_started_again,
        "samples": sampler.samples, "unlive_running_episodes": sampler.episodes,
        "longest_unsettled_seconds": round(sampler.longest_unsettled, 3),
    }


@pytest.mark.timeout(300)
def test_chaos_on_sqlite_with_one_daemon(
    seed: int, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(max_concurrent_runs="10", **SETTINGS).start()  # makes the tables
    run_chaos("sqlite", seed, daemon.client(), [daemon], tmp_path)


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_chaos_on_postgresql_with_two_daemons(
    seed: int, pg_url: str, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemons = [daemon_factory(root=tmp_path / worker, database_url=pg_url, worker_id=worker,
                              max_concurrent_runs="6", **SETTINGS).start()
               for worker in ("w1", "w2")]
    from tests.clients import PgClient

    run_chaos("postgresql", seed, PgClient(pg_url), daemons, tmp_path)
