"""A simulation that behaves as FUSION does (tests/sims/fusion_like.py) through a real daemon:
progress from its log, its results outside the run folder linked and shown, a cancel
that must wait the grace, and an adopting daemon that reads the log on (SPEC §5, §7)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import SIM, Client, Daemon, alive, pids_of_run, wait_until

FUSION_LIKE = Path(__file__).parents[1] / "sims" / "fusion_like.py"
PREFIX = "2026-11-28 19:47:57,626 - fusion.core.simulation - INFO - "


def fusion_daemon(daemon_factory: Callable[..., Daemon], **settings: str) -> Daemon:
    return daemon_factory(sim_command=f"{{python}} {FUSION_LIKE}", **settings).start()


def progress_of(client: Client, run_id: str) -> tuple[object, ...]:
    row = client.row(run_id)
    assert row is not None
    return (row["current_erlang"], row["total_erlangs"], row["current_iteration"],
            row["total_iterations"])


def wait_progress(client: Client, run_id: str, expected: tuple[object, ...]) -> None:
    wait_until(lambda: progress_of(client, run_id) == expected, 10,
               f"progress {expected} of run {run_id}")


def claim_column(daemon: Daemon, run_id: str, column: str) -> object:
    with sqlite3.connect(daemon.database) as connection:
        query = f"SELECT {column} FROM fusion_runner_claims WHERE run_id = ?"
        value = connection.execute(query, (run_id,)).fetchone()[0]
    connection.close()
    return value


def show(daemon: Daemon, run_id: str, *options: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fusion_runner", "show", run_id, *options,
         "--database-url", f"sqlite:///{daemon.database}"],
        env={k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")},
        capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout


def result_folders(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.rglob("*_erlang.json"))


def test_progress_follows_the_log_and_the_results_are_linked_and_shown(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = fusion_daemon(daemon_factory)
    client = Client(daemon.database)
    release, checkout = tmp_path / "release", tmp_path / "FUSION" / "data" / "output"
    run_id = client.submit({"sim": {
        "erlangs": "[300.0, 400.0]", "iterations": 3, "step": 0.1, "threads": 2,
        "output_root": str(checkout), "until": str(release), "pause_before": 2}})

    # While it runs: the first Erlang's columns, its two result folders linked.
    wait_progress(client, run_id, (300.0, 2, 3, 3))
    assert client.status(run_id) == "RUNNING"
    links = daemon.run_dir(run_id) / "output"
    wait_until(lambda: (links / "fusion-2").is_symlink(), 10, "the second link")
    folders = result_folders(checkout)
    assert [os.readlink(links / name) for name in ("fusion", "fusion-2")] == [
        str(folder) for folder in folders]
    assert (links / "fusion" / "300.0_erlang.json").is_file()
    release.touch()

    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert progress_of(client, run_id) == (400.0, 2, 3, 3)
    assert (links / "fusion-2" / "400.0_erlang.json").is_file()  # rewritten there, seen here
    assert sorted(os.listdir(links)) == ["fusion", "fusion-2"]
    lines = show(daemon, run_id).replace("\n" + " " * 18, "").splitlines()  # unfolded
    assert [line for line in lines if line.startswith("results ")] == [
        f"results           output/fusion -> {folders[0]}",
        f"results           output/fusion-2 -> {folders[1]}"]
    shown = json.loads(show(daemon, run_id, "--json"))["outputs"]
    assert [(each["path"], each["link"]) for each in shown] == [
        (str(folders[0]), "output/fusion"), (str(folders[1]), "output/fusion-2")]
    assert all(each["first_seen"].endswith("+00:00") for each in shown)


def test_a_cancel_waits_the_grace_then_kills_a_simulation_that_saves_and_goes_on(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = fusion_daemon(daemon_factory, stop_grace_seconds="1")
    client = Client(daemon.database)
    run_id = client.submit({"sim": {
        "erlangs": "[300.0, 400.0]", "iterations": 2, "step": 0.05, "workers": 2,
        "output_root": str(tmp_path / "out"), "until": str(tmp_path / "never"),
        "pause_before": 2}})
    wait_progress(client, run_id, (300.0, 2, 2, 2))
    pids = wait_until(lambda: len(found := pids_of_run(daemon.run_dir(run_id))) >= 3 and found,
                      10, "the simulation and its workers")

    cancelled = time.monotonic()
    client.cancel(run_id)
    log = daemon.run_dir(run_id) / "logs" / "sim.log"
    wait_until(lambda: "Received signal 15, saving statistics..." in log.read_text(), 5,
               "the simulation to save on SIGTERM")
    assert client.wait_final(run_id)["status"] == "CANCELLED"

    assert time.monotonic() - cancelled >= 0.9  # it went on after SIGTERM: the whole grace
    assert not [pid for pid in pids if alive(pid)]
    assert f"run={run_id} action=killed grace=1.0s" in daemon.log_text()


def test_with_progress_source_file_the_log_is_not_read(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = fusion_daemon(daemon_factory, progress_source="file")
    client = Client(daemon.database)
    run_id = client.submit({"sim": {"erlangs": "[300.0]", "iterations": 2, "step": 0.05,
                                    "output_root": str(tmp_path / "out")}})

    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert b"Iteration 2 out of 2" in (daemon.run_dir(run_id) / "logs" / "sim.log").read_bytes()
    assert progress_of(client, run_id) == (None, None, None, None)
    assert claim_column(daemon, run_id, "log_offset") is None
    assert not (daemon.run_dir(run_id) / "output" / "fusion").exists()


def test_in_auto_the_progress_file_wins_over_the_log(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(sim_command=f"{{python}} {SIM}").start()
    client = Client(daemon.database)
    release = tmp_path / "release"
    run_id = client.submit({"sim": {
        "stdout": PREFIX + "Starting simulation for 999.0 Erlang (load 1/7)",
        "progress": json.dumps([{"erlang": 300.0, "iteration": 1, "total_iterations": 2}]),
        "until": str(release),
        "after": json.dumps([{"erlang": 400.0, "iteration": 2, "total_iterations": 2}])}})

    # Whatever the log said before, the row is the file's once the file has spoken.
    wait_progress(client, run_id, (300.0, None, 1, 2))
    wait_until(lambda: f"run={run_id} action=progress_source source=file" in daemon.log_text(),
               5, "the switch to the file")
    with open(daemon.run_dir(run_id) / "logs" / "sim.log", "a") as log:
        log.write(PREFIX + "Iteration 5 out of 5 completed for Erlang: 777.0\n")
    release.touch()

    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert progress_of(client, run_id) == (400.0, None, 2, 2)
    assert claim_column(daemon, run_id, "log_offset") is None


def test_an_adopting_daemon_reads_the_log_on_from_the_stored_offset(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = fusion_daemon(daemon_factory)
    client = Client(daemon.database)
    release = tmp_path / "release"
    run_id = client.submit({"sim": {
        "erlangs": "[300.0, 400.0]", "iterations": 2, "step": 0.05,
        "output_root": str(tmp_path / "out"), "until": str(release), "pause_before": 2}})
    wait_progress(client, run_id, (300.0, 2, 2, 2))
    offset = claim_column(daemon, run_id, "log_offset")
    assert isinstance(offset, int) and offset > 0
    assert daemon.stop() == 0  # detach: the run goes on without a daemon

    # Bytes before the stored offset are never read again: rewritten in place
    # (same size, so not a truncation), they would change total_erlangs if they were.
    log = daemon.run_dir(run_id) / "logs" / "sim.log"
    text = log.read_bytes()
    assert text.count(b"(load 1/2)") == 1 and text.index(b"(load 1/2)") < offset
    with open(log, "r+b") as file:
        file.seek(text.index(b"(load 1/2)"))
        file.write(b"(load 1/9)")
    daemon.start()
    assert f"run={run_id} action=adopted" in daemon.log_text()
    assert f"log_offset={offset}" in daemon.log_text()
    with open(log, "ab") as file:
        file.write((PREFIX + "Iteration 1 out of 2 completed for Erlang: 300.0\n").encode())
    wait_progress(client, run_id, (300.0, 2, 1, 2))  # read on, from the offset only
    release.touch()

    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert progress_of(client, run_id) == (400.0, 2, 2, 2)
    final_offset = claim_column(daemon, run_id, "log_offset")
    assert isinstance(final_offset, int) and final_offset > offset


def test_with_progress_source_log_the_file_is_ignored(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(sim_command=f"{{python}} {SIM}", progress_source="log").start()
    client = Client(daemon.database)
    run_id = client.submit({"sim": {
        "stdout": PREFIX + "Starting simulation for 999.0 Erlang (load 1/7)",
        "progress": json.dumps([{"erlang": 300.0, "iteration": 1, "total_iterations": 2}])}})

    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert progress_of(client, run_id) == (999.0, 7, None, None)
