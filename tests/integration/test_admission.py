"""Runs admitted by the cores they take (`max_cores`), and the queue's order: priority,
then oldest; a held run skipped until released. A real daemon, real simulations that
declare their cores with `[general_settings] max_processes` (core/cores.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Client, Daemon, wait_until


def sim(cores: int, **keys: str) -> dict[str, dict[str, object]]:
    return {"general_settings": {"max_processes": cores}, "sim": dict(keys)}


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "fusion_runner", *args, "--database-url", daemon.url,
         "--runs-dir", str(daemon.runs_dir)],
        env=env, capture_output=True, text=True, timeout=30, check=False)


def started_order(client: Client, ids: list[str]) -> list[str]:
    rows = [client.wait_final(run_id, timeout=30) for run_id in ids]
    assert all(row["status"] == "COMPLETED" for row in rows), [dict(row) for row in rows]
    return [row["id"] for row in sorted(rows, key=lambda row: row["started_at"])]


def test_live_cores_never_exceed_max_cores_and_the_large_head_is_not_overtaken(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(max_cores="4", max_concurrent_runs="10").start()
    client = Client(daemon.database)
    release = tmp_path / "release"
    base = datetime.now(UTC).replace(tzinfo=None)
    first = client.submit(sim(2, until=str(release)), created_at=base)
    second = client.submit(sim(2, until=str(release)), created_at=base + timedelta(seconds=1))
    large = client.submit(sim(3, sleep="0.3"), created_at=base + timedelta(seconds=2))
    small = client.submit(sim(1, sleep="0.3"), created_at=base + timedelta(seconds=3))
    cores = {first: 2, second: 2, large: 3, small: 1}
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with client.connect() as connection:
                running = [row[0] for row in connection.execute(
                    "SELECT id FROM runs WHERE status = 'RUNNING'")]
            samples.append(sum(cores[run_id] for run_id in running))
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        client.wait_status(first, "RUNNING")
        client.wait_status(second, "RUNNING")
        # 4 cores live: the 3-core head waits, and the 1-core run behind it does not pass it.
        wait_until(lambda: "action=waiting reason=cores" in daemon.log_text(), 10,
                   "the daemon to find the head too large")
        assert client.status(large) == "PENDING" and client.status(small) == "PENDING"
        out = cli(daemon, "ls", "--json")
        places = {row["id"]: row["queue_position"] for row in json.loads(out.stdout)}
        assert (places[large], places[small]) == (1, 2), out.stderr
        release.touch()
        order = started_order(client, [first, second, large, small])
    finally:
        done.set()
        sampler.join()

    assert max(samples) <= 4 and max(samples) == 4
    assert order[2:] == [large, small]  # the 3-core run started, before the later 1-core one
    rows = {run_id: client.row(run_id) for run_id in cores}
    assert rows[large]["started_at"] >= max(rows[first]["completed_at"],
                                            rows[second]["completed_at"])


def test_a_run_larger_than_max_cores_starts_alone_when_nothing_else_runs(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(max_cores="4", max_concurrent_runs="10").start()
    client = Client(daemon.database)
    release, big_release = tmp_path / "release", tmp_path / "big"
    base = datetime.now(UTC).replace(tzinfo=None)
    before = client.submit(sim(1, until=str(release)), created_at=base)
    client.wait_status(before, "RUNNING")
    big = client.submit(sim(6, until=str(big_release)), created_at=base + timedelta(seconds=1))
    after = client.submit(sim(1), created_at=base + timedelta(seconds=2))
    wait_until(lambda: "action=waiting reason=cores" in daemon.log_text(), 10,
               "the 6-core run to wait")
    assert client.status(big) == "PENDING"
    release.touch()
    client.wait_status(big, "RUNNING")
    # Alone and larger than max_cores: nothing starts beside it.
    wait_until(lambda: daemon.log_text().count("action=waiting reason=cores") >= 2, 10,
               "the run behind it to wait")
    assert client.status(after) == "PENDING"
    big_release.touch()
    assert started_order(client, [before, big, after]) == [before, big, after]
    rows = {run_id: client.row(run_id) for run_id in (before, big, after)}
    assert rows[big]["started_at"] >= rows[before]["completed_at"]
    assert rows[after]["started_at"] >= rows[big]["completed_at"]


def test_higher_priority_first_and_a_held_run_waits_until_released(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = Client(daemon.database)
    gate = tmp_path / "gate"
    blocker = client.submit(sim(1, until=str(gate)))
    client.wait_status(blocker, "RUNNING")
    ini = tmp_path / "run.ini"
    ini.write_text("[sim]\nsleep = 0\n")
    ids: dict[str, str] = {}
    for name, priority in (("old", "0"), ("urgent", "5"), ("held", "9"), ("later", "0"),
                           ("low", "-1")):
        out = cli(daemon, "submit", str(ini), "--name", name, "--priority", priority)
        assert out.returncode == 0, out.stderr
        ids[name] = out.stdout.strip()
    out = cli(daemon, "hold", ids["held"], blocker)
    assert out.returncode == 1  # the blocker is RUNNING: not held
    assert f"{ids['held']}: held" in out.stdout
    assert f"{blocker}: RUNNING, not held" in out.stdout
    assert "already held" in cli(daemon, "hold", ids["held"]).stdout

    out = cli(daemon, "ls", "--json")
    places = {row["id"]: row["queue_position"] for row in json.loads(out.stdout)}
    assert [places[ids[name]] for name in ("urgent", "old", "later", "low", "held")] == [
        1, 2, 3, 4, "held"]
    table = cli(daemon, "ls").stdout
    assert any(ids["held"] in line and " held" in line for line in table.splitlines())

    gate.touch()
    waiting = [ids[name] for name in ("urgent", "old", "later", "low")]
    assert started_order(client, [blocker, *waiting]) == [blocker, *waiting]
    assert client.status(ids["held"]) == "PENDING"  # the queue ran dry around it
    out = cli(daemon, "release", ids["held"])
    assert out.returncode == 0 and f"{ids['held']}: released" in out.stdout
    assert client.wait_final(ids["held"])["status"] == "COMPLETED"
    assert "not held, nothing changed" in cli(daemon, "release", ids["held"]).stdout
