"""`fusion-runner ls` as sacct and squeue: CPU time and peak memory of ended runs, and
the place of pending runs in the daemon's queue. A real daemon, real simulations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fusion_runner.cli import view
from fusion_runner.core.store import Store
from tests.conftest import Client, Daemon, new_id

MIB = 1 << 20
# A simulation that allocates `mib` MiB itself and has a child burn `cpu` s of CPU time:
# the shim's record must count the child's CPU and the parent's memory.
HOG = """\
import configparser, os, subprocess, sys
parser = configparser.ConfigParser()
parser.read(os.environ["FUSION_CONFIG_FILE"])
hog = parser["hog"] if parser.has_section("hog") else {}
held = b"x" * (int(hog.get("mib", "0")) * 1024 * 1024)  # written, so resident
burn = "import time\\nwhile time.process_time() < %s: pass" % float(hog.get("cpu", "0"))
child = subprocess.Popen([sys.executable, "-c", burn])
with open(os.path.join(os.environ["FUSION_RUN_DIR"], "pids"), "a") as pids:
    pids.write(f"{os.getpid()}\\n{child.pid}\\n")
sys.exit(child.wait())
"""


def ls_all(database: Path, *commands: tuple[str, ...],
           columns: int | None = None) -> list[str]:
    """The output of several `ls` at once (they only read), each its own process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FUSION_RUNNER_")
           and k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    env["FUSION_RUNNER_DATABASE_URL"] = f"sqlite:///{database}"
    if columns is not None:
        env["COLUMNS"] = str(columns)
    processes = [subprocess.Popen([sys.executable, "-m", "fusion_runner", "ls", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in commands]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "\x1b[" not in stdout
        outputs.append(stdout)
    return outputs


def table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """`ls` on 80 columns: its header's words, and each run's line split into words."""
    assert all(len(line) <= 80 for line in text.splitlines()), text
    header, *lines = text.splitlines()
    return header.split(), {line.split()[0]: line.split() for line in lines}


def by_id(text: str) -> dict[str, dict[str, Any]]:
    """`ls --json`, by id."""
    return {row["id"]: row for row in json.loads(text)}


def test_an_ended_run_shows_its_cpu_time_and_peak_memory(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    hog = tmp_path / "hog.py"
    hog.write_text(HOG)
    daemon = daemon_factory(sim_command=f"{{python}} {hog}").start()
    client = Client(daemon.database)
    small = client.submit({"hog": {"cpu": "0", "mib": "0"}}, name="small")
    big = client.submit({"hog": {"cpu": "0.3", "mib": "64"}}, name="big")
    for run_id in (small, big):
        assert client.wait_final(run_id)["status"] == "COMPLETED"

    text, json_text = ls_all(daemon.database, (), ("--json",))
    header, lines = table(text)
    rows = by_id(json_text)

    # The child's 0.3 s count; Python's start-up alone is some CPU and some MiB.
    assert rows[big]["cpu_seconds"] >= 0.3
    assert 0 < rows[small]["cpu_seconds"] < 0.3
    assert rows[big]["peak_rss_bytes"] >= 64 * MIB
    assert MIB < rows[small]["peak_rss_bytes"] < 64 * MIB
    assert rows[big]["queue_position"] is None and rows[small]["queue_position"] is None
    assert header == ["ID", "NAME", "STATUS", "DONE", "TIME", "CPU", "MEM", "ERROR"]
    for run_id in (small, big):
        cpu, mem = lines[run_id][5:7]
        assert cpu == view.cpu_text(rows[run_id]["cpu_seconds"]) != "-"
        assert mem == view.memory_text(rows[run_id]["peak_rss_bytes"]) != "-"
    assert float(lines[big][5].removesuffix("s")) >= 0.3
    assert lines[big][6].endswith("M") and float(lines[big][6][:-1]) >= 64


def test_pending_runs_show_their_place_in_the_queue(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = Client(daemon.database)
    release = tmp_path / "release"
    busy = client.submit({"sim": {"until": str(release)}}, name="busy")
    client.wait_status(busy, "RUNNING")
    # Oldest created_at first, ties by id: `second` is inserted after `third`.
    moment = datetime.now(UTC).replace(tzinfo=None)
    first = client.submit({"sim": {"until": str(tmp_path / "never")}}, name="first",
                          created_at=moment)
    third = client.submit(run_id="ffffff" + new_id()[:6], name="third",
                          created_at=moment + timedelta(seconds=1))
    second = client.submit(run_id="000000" + new_id()[:6], name="second",
                           created_at=moment + timedelta(seconds=1))

    # With --limit 1 only one is shown: its place is still in the whole queue.
    text, json_text, one = ls_all(daemon.database, (), ("--json",),
                                  ("--json", "--status", "PENDING", "--limit", "1"))
    header, lines = table(text)
    rows, only = by_id(json_text), by_id(one)

    assert header[3] == "DONE"
    assert [lines[run_id][3] for run_id in (first, second, third)] == ["#1", "#2", "#3"]
    assert [rows[run_id]["queue_position"] for run_id in (first, second, third)] == [1, 2, 3]
    assert rows[busy]["queue_position"] is None and rows[busy]["cpu_seconds"] is None
    assert lines[busy][2:4] == ["RUNNING", "-"] and len(lines[busy]) == 5  # CPU, MEM blank
    # Newest first, ties by id: `second` is the one shown.
    assert {run_id: row["queue_position"] for run_id, row in only.items()} == {second: 2}

    client.cancel(second)
    text, json_text = ls_all(daemon.database, (), ("--json",))
    _, lines = table(text)
    rows = by_id(json_text)

    assert [lines[run_id][3] for run_id in (first, third)] == ["#1", "#2"]
    assert [rows[run_id]["queue_position"] for run_id in (first, third)] == [1, 2]
    assert lines[second][2:4] == ["CANCELLED", "-"] and rows[second]["queue_position"] is None

    # #1 is the run the daemon starts next.
    release.touch()
    client.wait_final(busy)
    client.wait_status(first, "RUNNING")
    _, lines = table(*ls_all(daemon.database, ()))

    assert client.status(third) == "PENDING"
    assert lines[third][3] == "#1"


def test_a_wider_terminal_shows_when_runs_started(
    daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory().start()
    client = Client(daemon.database)
    run_id = client.submit(name="done")
    client.wait_final(run_id)

    (narrow,) = ls_all(daemon.database, ())
    (wide,) = ls_all(daemon.database, (), columns=94)
    (wider,) = ls_all(daemon.database, (), columns=110)

    assert "STARTED" not in narrow and "WORKER" not in narrow
    assert wide.splitlines()[0].split() == [
        "ID", "NAME", "STATUS", "DONE", "STARTED", "TIME", "CPU", "MEM", "ERROR"]
    assert all(len(line) <= 94 for line in wide.splitlines())
    header, line = wider.splitlines()[:2]
    assert header.split() == [
        "ID", "NAME", "STATUS", "DONE", "STARTED", "WORKER", "TIME", "CPU", "MEM", "ERROR"]
    assert line.split()[6] == "test"  # the daemon's worker_id (STARTED is two words)
    assert all(len(line) <= 110 for line in wider.splitlines())


def test_queue_positions_of_a_few_or_of_a_long_list_of_ids(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    store = Store.open(f"sqlite:///{database}")
    try:
        client = Client(database)
        start = datetime(2024, 5, 1, 12)
        # Created in reverse of their order of ids; every second one at the same moment
        # as the one before it, so that ties go by id.
        queue = [f"{n:012x}" for n in range(600)]
        for n, run_id in reversed(list(enumerate(queue))):
            client.submit(run_id=run_id, created_at=start + timedelta(seconds=n // 2))
        client.cancel(queue[0])
        expected = {run_id: place for place, run_id in enumerate(queue[1:], 1)}

        assert store.queue_positions(queue) == expected  # more ids than are bound
        assert store.queue_positions([queue[0], queue[5], "unknown"]) == {queue[5]: 5}
        assert store.queue_positions([]) == {}
    finally:
        store.close()
