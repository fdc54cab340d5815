"""Every progress line reaches its column on a wake-up, never by the fallback sweep.

The daemon's fallback looks (poll_interval_seconds, progress_poll_seconds) are a
minute here, so a line whose wake-up was lost would wait about a minute; each is
awaited for 10 s only. The simulations change another file of their folder and
then create, replace or append to progress.jsonl at once, the moment a watch is
most likely between its one shot and its re-arming.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fusion_runner.daemon.writebudget import BURST
from tests.conftest import Client, Daemon, wait_until

ROUNDS_SIM = Path(__file__).parent.parent / "sims" / "progress_rounds.py"
FALLBACK = "60"
RUNS = 4
ROUNDS = 15
BATCHES = 2


def rounds_daemon(daemon_factory: Callable[..., Daemon], **settings: str) -> Daemon:
    return daemon_factory(
        sim_command=f"{{python}} {ROUNDS_SIM}", poll_interval_seconds=FALLBACK,
        progress_poll_seconds=FALLBACK, max_concurrent_runs=str(RUNS), **settings,
    ).start()


def iteration(client: Client, run_id: str) -> object:
    row = client.row(run_id)
    return None if row is None else row["current_iteration"]


def wait_iteration(client: Client, run_ids: list[str], n: int) -> None:
    for run_id in run_ids:
        # Far below the fallback: a line that needed it would time out here.
        wait_until(lambda run_id=run_id: iteration(client, run_id) == n, 10,
                   f"line {n} of run {run_id} in its column")


def test_lines_written_as_the_file_is_created_or_rearmed_reach_the_column(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = rounds_daemon(daemon_factory)
    client = daemon.client()
    go = tmp_path / "go"
    go.mkdir()
    for _ in range(BATCHES):
        run_ids = [client.submit({"rounds": {"rounds": str(ROUNDS), "go": str(go)}})
                   for _ in range(RUNS)]
        for n in range(1, ROUNDS + 1):
            wait_iteration(client, run_ids, n)
            for run_id in run_ids:
                (go / f"{run_id}-{n + 1}").touch()
        for run_id in run_ids:
            assert client.wait_final(run_id)["status"] == "COMPLETED"


def waiting_run(daemon: Daemon, tmp_path: Path) -> tuple[str, Path, Path]:
    """A run that waits for the test: its id, progress file and release file."""
    client = daemon.client()
    release = tmp_path / "release"
    run_id = client.submit({"sim": {"until": str(release)}})
    wait_until(lambda: (row := client.row(run_id)) is not None and row["pid"], 10, "the start")
    return run_id, daemon.run_dir(run_id) / "progress.jsonl", release


def write_and_see(daemon: Daemon, run_id: str, progress: Path, lines: range) -> None:
    """Each line appended once the one before it is in the column."""
    for n in lines:
        with open(progress, "a") as file:
            file.write(f'{{"iteration": {n}}}\n')
        wait_iteration(daemon.client(), [run_id], n)


@pytest.mark.timeout(60)
def test_the_second_of_two_close_lines_is_not_held_back_for_the_write_interval(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """With a write interval of a minute, a line right after another is still written
    at once: only lines arriving faster than that for a while are merged."""
    daemon = daemon_factory(poll_interval_seconds=FALLBACK, progress_poll_seconds=FALLBACK,
                            progress_interval_seconds=FALLBACK).start()
    run_id, progress, release = waiting_run(daemon, tmp_path)

    write_and_see(daemon, run_id, progress, range(1, 3))
    release.touch()
    assert daemon.client().wait_final(run_id)["status"] == "COMPLETED"


# On PostgreSQL nothing else wakes the loop (on SQLite it looks for clients' commits
# every few tens of milliseconds while runs live, which would hide a missing timer).
POSTGRES_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@POSTGRES_ONLY
@pytest.mark.timeout(60)
def test_a_line_beyond_the_write_budget_is_written_when_it_refills_without_another(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, backend: str
) -> None:
    """Lines faster than one a second for a while spend the budget: the next one waits
    for a timer (a second here), not for another line or the minute's fallback."""
    daemon = daemon_factory(poll_interval_seconds=FALLBACK, progress_poll_seconds=FALLBACK,
                            progress_interval_seconds="1").start()
    run_id, progress, release = waiting_run(daemon, tmp_path)

    write_and_see(daemon, run_id, progress, range(1, BURST + 3))
    release.touch()
    assert daemon.client().wait_final(run_id)["status"] == "COMPLETED"
