"""`fusion-runner results` (and `show`'s results), read from real reference-simulation runs.

A real daemon runs the reference simulation; its results table is compared
with the `*_erlang.json` files the runs wrote, while a run runs (its
`erlang_complete` events) and after it ended (its files); the command is run
as a user runs it, in a process of its own.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, wait_until
from tests.integration.test_cli import cli, cli_env
from tests.integration.test_refsim_daemon import REFSIM, refsim_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table(database: Path, run_id: str) -> dict[float, dict[str, Any]]:
    """The results table's rows of a run, by Erlang."""
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT erlang, blocking_mean, blocking_ci, iterations FROM fusion_runner_results"
            " WHERE run_id = ?", (run_id,)).fetchall()
    return {row["erlang"]: dict(row) for row in rows}


def files(run_dir: Path) -> dict[float, dict[str, Any]]:
    """What each `{erlang}_erlang.json` of the run says, in the table's terms."""
    found = {}
    for path in (run_dir / "output").glob("*_erlang.json"):
        document = json.loads(path.read_text())
        block_lists = [stats["sim_block_list"] for stats in document["iter_stats"].values()]
        found[float(path.name.removesuffix("_erlang.json"))] = {
            "erlang": float(path.name.removesuffix("_erlang.json")),
            "blocking_mean": document["blocking_mean"],
            "blocking_ci": document["ci_rate_block"],
            "iterations": max(len(values) for values in block_lists),
        }
    return found


def completed_run(daemon: Daemon, **general: object) -> str:
    client = daemon.client()
    run_id = client.submit(refsim_config(**general))
    row = client.wait_final(run_id, timeout=60)
    assert row["status"] == "COMPLETED", row["error_message"]
    return run_id


@pytest.fixture
def refsim_daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory(sim_command=REFSIM, max_concurrent_runs="2").start()


def test_the_table_holds_the_numbers_of_the_output_files(refsim_daemon: Daemon) -> None:
    run_id = completed_run(refsim_daemon, num_requests=2000, max_iters=3)

    expected = files(refsim_daemon.run_dir(run_id))
    assert sorted(expected) == [300.0, 400.0, 500.0]
    assert table(refsim_daemon.database, run_id) == expected
    assert all(point["iterations"] == 3 and point["blocking_ci"] is not None
               for point in expected.values())

    shown = cli(refsim_daemon.database, "results", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    [run] = json.loads(shown.stdout)
    assert run == {"id": run_id, "name": "test", "points": sorted(
        expected.values(), key=lambda point: point["erlang"])}


def test_an_erlang_point_is_in_the_table_before_the_run_ends(refsim_daemon: Daemon) -> None:
    client = refsim_daemon.client()
    # Six points on this machine's workers, each long enough that the first
    # finishes seconds before the last.
    run_id = client.submit(refsim_config(erlang_start=100, erlang_stop=600, erlang_step=100,
                                         num_requests=100_000, max_iters=2))

    early = wait_until(lambda: table(refsim_daemon.database, run_id), 30, "a first result")
    status = client.status(run_id)
    assert status == "RUNNING"  # seen while it runs, not only from its files at the end

    # While it runs: the event's numbers (the refsim's 95 % Student-t interval).
    events = [json.loads(line) for line in
              (refsim_daemon.run_dir(run_id) / "progress.jsonl").read_text().splitlines()]
    completed = {event["erlang"]: event["metrics"] for event in events
                 if event["type"] == "erlang_complete"}
    for erlang, point in early.items():
        metrics = completed[erlang]
        assert point["blocking_mean"] == metrics["mean_blocking"]
        assert point["blocking_ci"] == pytest.approx(metrics["ci_upper"] - metrics["mean_blocking"])
        assert point["iterations"] == 2

    row = client.wait_final(run_id, timeout=60)
    assert row["status"] == "COMPLETED", row["error_message"]
    # After: every point, as the files have them (FUSION's interval).
    final = table(refsim_daemon.database, run_id)
    assert sorted(final) == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    assert final == files(refsim_daemon.run_dir(run_id))


def test_several_runs_side_by_side_as_text_csv_and_json(refsim_daemon: Daemon) -> None:
    first = refsim_daemon.client().submit(refsim_config(num_requests=2000, max_iters=2),
                                          name="light")
    second = refsim_daemon.client().submit(refsim_config(num_requests=2000, max_iters=3, seed=9),
                                           name="heavy")
    for run_id in (first, second):
        assert refsim_daemon.client().wait_final(run_id, timeout=60)["status"] == "COMPLETED"
    database = refsim_daemon.database

    text = cli(database, "results", first, second[:6])
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["ERLANG", first, second]
    assert lines[1].split() == ["light", "heavy"]
    rows = [line.split()[0] for line in lines[2:]]
    assert rows == ["300", "400", "500"]  # one row per load, a column per run
    mean_300 = table(database, first)[300.0]["blocking_mean"]
    assert f"{mean_300:.4g}" in lines[2] and "(2 it)" in lines[2] and "(3 it)" in lines[2]

    as_csv = cli(database, "results", first, second, "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    records = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert records[0] == ["id", "name", "erlang", "blocking_mean", "blocking_ci", "iterations"]
    assert len(records) == 1 + 2 * 3
    by_key = {(record[0], float(record[2])): record for record in records[1:]}
    for run_id in (first, second):
        for erlang, point in files(refsim_daemon.run_dir(run_id)).items():
            record = by_key[(run_id, erlang)]
            assert float(record[3]) == point["blocking_mean"]
            assert float(record[4]) == point["blocking_ci"]
            assert int(record[5]) == point["iterations"]
    assert {record[1] for record in records[1:] if record[0] == first} == {"light"}

    as_json = cli(database, "results", first, second, "--json")
    assert as_json.returncode == 0, as_json.stderr
    runs = json.loads(as_json.stdout)
    assert [(run["id"], run["name"]) for run in runs] == [(first, "light"), (second, "heavy")]
    for run in runs:
        assert [set(point) for point in run["points"]] == [
            {"erlang", "blocking_mean", "blocking_ci", "iterations"}] * 3
        assert [point["erlang"] for point in run["points"]] == [300.0, 400.0, 500.0]


def test_show_prints_the_results_table(refsim_daemon: Daemon) -> None:
    run_id = completed_run(refsim_daemon, num_requests=2000, max_iters=2)
    expected = files(refsim_daemon.run_dir(run_id))

    text = cli(refsim_daemon.database, "show", run_id)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    start = lines.index("blocking probability:")
    exit_line = next(index for index, line in enumerate(lines) if line.startswith("exit "))
    assert exit_line < start < lines.index("config_json:")  # after the exit line
    block = lines[start + 1:start + 5]
    assert block[0].split()[0] == "ERLANG"
    assert [line.split()[0] for line in block[1:]] == ["300", "400", "500"]
    assert f"{expected[400.0]['blocking_mean']:.4g}" in block[2]

    as_json = cli(refsim_daemon.database, "show", run_id, "--json")
    assert json.loads(as_json.stdout)["results"] == sorted(
        expected.values(), key=lambda point: point["erlang"])


def test_without_the_table_the_run_folder_files_are_read(refsim_daemon: Daemon) -> None:
    run_id = completed_run(refsim_daemon, num_requests=2000, max_iters=2)
    refsim_daemon.stop()
    # As a database of a daemon older than the results table.
    with sqlite3.connect(refsim_daemon.database) as conn:
        conn.execute("DROP TABLE fusion_runner_results")

    shown = cli(refsim_daemon.database, "results", run_id, "--json")

    assert shown.returncode == 0, shown.stderr
    [run] = json.loads(shown.stdout)
    assert run["points"] == sorted(files(refsim_daemon.run_dir(run_id)).values(),
                                   key=lambda point: point["erlang"])


def test_plot_writes_a_png_of_each_run(refsim_daemon: Daemon, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    first = completed_run(refsim_daemon, num_requests=2000, max_iters=3)
    second = completed_run(refsim_daemon, num_requests=2000, max_iters=3, seed=9)
    image = tmp_path / "blocking.png"

    done = cli(refsim_daemon.database, "results", first, second, "--plot", str(image),
               env=cli_env(refsim_daemon.database, MPLBACKEND="TkAgg", DISPLAY=""))

    assert done.returncode == 0, done.stderr
    assert first in done.stdout  # the table is printed as well
    data = image.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (700, 450)
    assert len(data) > 10_000  # lines, bands, axes and legend, not an empty canvas


def test_plot_without_matplotlib_says_how_to_install_it(
    refsim_daemon: Daemon, tmp_path: Path
) -> None:
    run_id = completed_run(refsim_daemon, num_requests=2000, max_iters=2)
    image = tmp_path / "blocking.png"
    # The command in a process where `import matplotlib` fails, as where it is not installed.
    blocked = ("import sys; sys.modules['matplotlib'] = None; "
               "from fusion_runner.cli.main import main; sys.exit(main(sys.argv[1:]))")

    done = subprocess.run(
        [sys.executable, "-c", blocked, "results", run_id, "--plot", str(image)],
        env=cli_env(refsim_daemon.database), capture_output=True, text=True, timeout=30)

    assert done.returncode == 1
    assert done.stderr.strip() == ("fusion-runner: --plot needs matplotlib, which is not "
                                   "installed: pip install 'fusion-runner[plot]'")
    assert not image.exists()


def test_the_reader_keeps_each_erlang_complete_with_its_iterations(tmp_path: Path) -> None:
    from fusion_runner.core.progress import ErlangResult, ProgressReader

    path = tmp_path / "progress.jsonl"
    lines = [
        {"type": "start", "config": {"total_erlangs": 2, "total_iterations": 3}},
        {"type": "iteration", "erlang": 300.0, "iteration": 3, "total_iterations": 3},
        {"type": "iteration", "erlang": 400.0, "iteration": 1, "total_iterations": 3},
        # An interval clipped at 0: the half width is the unclipped side.
        {"type": "erlang_complete", "erlang": 300.0,
         "metrics": {"mean_blocking": 0.02, "ci_lower": 0.0, "ci_upper": 0.05}},
        {"type": "erlang_complete", "erlang": 400.0, "metrics": {"mean_blocking": "high"}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    reader = ProgressReader(path)

    reader.poll()

    assert reader.take_results() == [ErlangResult(300.0, 0.02, pytest.approx(0.03), 3),
                                     ErlangResult(400.0, None, None, 1)]
    last_line = len(path.read_bytes()) - len(json.dumps(lines[-1])) - 1
    assert reader.take_problems() == [
        f"byte {last_line}: metrics.mean_blocking: not a number: 'high'"]
    assert reader.take_results() == []  # taken once
