"""Simulations that misbehave (tests/sims/hostile.py): each run ends with the status
its simulation earned, the daemon's memory stays bounded, and no process is left.

The daemon's memory is its resident set (psutil) after the run, or at its largest
while the run is read, against the same just before the run: a generous bound
(RSS_GROWTH) that a copy of what the simulation wrote would break.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Client, Daemon, alive, wait_until

HOSTILE = Path(__file__).parent.parent / "sims" / "hostile.py"
MIB = 1 << 20
RSS_GROWTH = 100 * MIB


@dataclass
class Hostile:
    """A daemon that runs tests/sims/hostile.py, and what its runs left behind."""

    daemon: Daemon
    client: Client
    folder: Path

    def pid_file(self, name: str) -> Path:
        return self.folder / f"{name}.pids"

    def submit(self, name: str, **settings: str) -> str:
        settings["pid_file"] = str(self.pid_file(name))
        return self.client.submit({"hostile": settings}, name=name)

    def recorded_pids(self, name: str) -> list[int]:
        path = self.pid_file(name)
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def rss(self) -> int:
        assert self.daemon.process is not None
        return int(psutil.Process(self.daemon.process.pid).memory_info().rss)

    def final(self, run_id: str, timeout: float = 30.0) -> tuple[Any, int]:
        """The run's row once final, and the daemon's largest RSS seen meanwhile."""
        largest = [self.rss()]

        def done() -> Any:
            largest.append(self.rss())
            row = self.client.row(run_id)
            ended = row is not None and row["status"] in ("COMPLETED", "FAILED", "CANCELLED")
            return row if ended and row["completed_at"] is not None else None

        row = wait_until(done, timeout, f"run {run_id} to end")
        return row, max(largest)

    def assert_nothing_left(self, name: str, row: Any) -> None:
        pids = self.recorded_pids(name)
        assert pids, "the simulation recorded no pid"
        assert [pid for pid in pids if alive(pid)] == []
        assert row["pgid"] is not None and group_members(int(row["pgid"])) == []

    def kill_recorded(self) -> None:
        for path in self.folder.glob("*.pids"):
            for pid in (int(pid) for pid in path.read_text().split()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


@pytest.fixture
def hostile(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> Iterator[Hostile]:
    daemon = daemon_factory(sim_command=f"{{python}} {HOSTILE}", max_log_bytes=str(10 * MIB),
                            progress_poll_seconds="0.1").start()
    folder = tmp_path / "recorded"
    folder.mkdir()
    made = Hostile(daemon, daemon.client(), folder)
    yield made
    made.kill_recorded()  # a run that deleted its folder took its pids file with it


def test_closed_stdout_and_stderr_complete_with_its_progress(hostile: Hostile) -> None:
    before = hostile.rss()
    run_id = hostile.submit("closed", close_std="True")
    row, largest = hostile.final(run_id)
    assert (row["status"], row["error_message"]) == ("COMPLETED", None)
    assert row["current_iteration"] == 3  # its progress.jsonl took fd 0, and was read
    assert largest - before < RSS_GROWTH
    hostile.assert_nothing_left("closed", row)


def logs(hostile: Hostile, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    env["FUSION_RUNNER_DATABASE_URL"] = hostile.daemon.url
    return subprocess.run([sys.executable, "-m", "fusion_runner", "logs", *args],
                          env=env, capture_output=True, timeout=60)


def kept_and_dropped(log: Path) -> tuple[int, bytes]:
    """(the bytes the marker says were dropped, the lines after it)."""
    data = log.read_bytes()
    first, newline, rest = data.partition(b"\n")
    assert first.startswith(b"[fusion-runner: ") and newline, first[:200]
    return int(first.split()[1]), rest


@pytest.mark.timeout(120)
def test_100_mb_to_stdout_keeps_the_log_near_the_cap_and_its_newest_lines(
    hostile: Hostile, tmp_path: Path,
) -> None:
    before = hostile.rss()
    run_id = hostile.submit("chatty", stdout_bytes=str(100 * MIB), cap=str(10 * MIB))
    hostile.client.wait_status(run_id, "RUNNING")
    followed = tmp_path / "followed.log"
    with open(followed, "wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "fusion_runner", "logs", "-f", run_id],
            env={**os.environ, "FUSION_RUNNER_DATABASE_URL": hostile.daemon.url},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        row, largest = hostile.final(run_id, timeout=90)
        assert follower.wait(30) == 0

    assert (row["status"], row["error_message"]) == ("COMPLETED", None)
    log = hostile.daemon.run_dir(run_id) / "logs" / "sim.log"
    said = json.loads(Path(f"{hostile.pid_file('chatty')}.log.json").read_text())
    assert said["largest"] <= 10 * MIB + 2 * MIB  # it waited past the cap: the cut came
    assert log.stat().st_size <= 10 * MIB
    dropped, kept = kept_and_dropped(log)
    assert dropped + len(kept) == said["written"]  # nothing lost but what was dropped
    assert b"\0" not in kept  # the simulation wrote on after each cut: no hole
    assert logs(hostile, run_id, "-n", "2").stdout.endswith(b"x\nlast line\n")
    numbers = [int(line.split()[1]) for line in kept.splitlines()[:-1]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # Followed across the cuts: never a line twice, the newest at the end.
    shown = [line.split()[1] for line in followed.read_bytes().splitlines()
             if line.startswith(b"line ")]
    assert [int(n) for n in shown] == sorted({int(n) for n in shown})
    assert followed.read_bytes().endswith(b"last line\n")
    assert f"run={run_id} action=log_capped" in hostile.daemon.log_text()
    assert largest - before < RSS_GROWTH
    hostile.assert_nothing_left("chatty", row)


def test_a_chatty_failure_says_its_last_words_past_the_cap(hostile: Hostile) -> None:
    run_id = hostile.submit("chatty_failure", stdout_bytes=str(30 * MIB), cap=str(10 * MIB),
                            stderr_last="FATAL: out of wavelengths", exit="3")
    row, _ = hostile.final(run_id, timeout=60)
    assert row["status"] == "FAILED"
    assert row["error_message"].startswith("exit code 3")
    assert row["error_message"].endswith("FATAL: out of wavelengths")
    assert hostile.daemon.run_dir(run_id).joinpath("logs", "sim.log").stat().st_size <= 10 * MIB


@pytest.mark.timeout(90)
def test_200_children_are_all_gone_when_it_ends(hostile: Hostile) -> None:
    before = hostile.rss()
    run_id = hostile.submit("forker", children="200")
    row, largest = hostile.final(run_id, timeout=60)
    assert (row["status"], row["error_message"]) == ("COMPLETED", None)
    assert len(hostile.recorded_pids("forker")) == 201
    assert largest - before < RSS_GROWTH
    hostile.assert_nothing_left("forker", row)


def test_a_simulation_in_a_group_and_session_of_its_own_is_cancelled_whole(
    hostile: Hostile,
) -> None:
    run_id = hostile.submit("regroup", regroup="True")
    wait_until(lambda: len(hostile.recorded_pids("regroup")) == 2, 15, "its child")
    sim, child = hostile.recorded_pids("regroup")
    wait_until(lambda: os.getpgid(child) == child and os.getsid(sim) == sim, 15, "regrouped")
    hostile.client.cancel(run_id)
    row, _ = hostile.final(run_id)
    assert row["status"] == "CANCELLED"
    hostile.assert_nothing_left("regroup", row)


def test_one_that_ignores_sigterm_and_forks_on_it_is_cancelled_whole(
    hostile: Hostile,
) -> None:
    run_id = hostile.submit("term_forker", term_forks="3")
    ready = hostile.daemon.run_dir(run_id) / "term_ready"
    wait_until(ready.exists, 15, "its SIGTERM handler")
    hostile.client.cancel(run_id)
    row, _ = hostile.final(run_id)
    assert row["status"] == "CANCELLED"
    assert len(hostile.recorded_pids("term_forker")) > 1  # it forked on the SIGTERM
    hostile.assert_nothing_left("term_forker", row)


def test_one_that_deletes_its_run_directory_ends_and_the_daemon_goes_on(
    hostile: Hostile,
) -> None:
    run_id = hostile.submit("vandal", delete_run_dir="True")
    row, _ = hostile.final(run_id)
    # Its exit record could not be saved; the copy down the shim's pipe tells exit 0.
    assert (row["status"], row["error_message"]) == ("COMPLETED", None)
    assert not hostile.daemon.run_dir(run_id).exists()
    hostile.assert_nothing_left("vandal", row)
    after = hostile.submit("after_vandal")
    assert hostile.final(after)[0]["status"] == "COMPLETED"


@pytest.mark.timeout(120)
def test_a_1_gib_progress_line_without_a_newline_is_skipped_in_bounded_memory(
    hostile: Hostile,
) -> None:
    before = hostile.rss()
    run_id = hostile.submit("huge_line", progress_gib="1")
    row, largest = hostile.final(run_id, timeout=90)
    assert (row["status"], row["error_message"]) == ("COMPLETED", None)
    assert row["current_iteration"] == 3  # the record after the huge line was read
    assert largest - before < RSS_GROWTH
    hostile.assert_nothing_left("huge_line", row)
