"""The reference simulation under a real daemon: the default workload, end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psutil

from fusion_runner.core.inifile import read_ini
from tests.conftest import Client, Daemon, alive, wait_until

TEMPLATE = Path(__file__).resolve().parents[2] / "fusion_runner" / "data" / "fusion_minimal.ini"
REFSIM = ("{python} -m fusion_runner.refsim --config {config} --progress-file {progress} "
          "--output-dir {output_dir}")


def refsim_config(**general: object) -> dict[str, dict[str, object]]:
    config = read_ini(TEMPLATE)
    config["general_settings"] |= {"seed": 3} | general
    return config


def test_reference_run_completes_with_its_last_progress_and_outputs(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(sim_command=REFSIM).start()
    client = Client(daemon.database)
    run_id = client.submit(refsim_config(num_requests=2000, max_iters=2))

    row = client.wait_final(run_id, timeout=60)

    assert row["status"] == "COMPLETED", row["error_message"]
    assert (row["total_erlangs"], row["total_iterations"]) == (3, 2)
    assert row["current_iteration"] == 2
    assert row["current_erlang"] in (300.0, 400.0, 500.0)
    output = daemon.run_dir(run_id) / "output"
    assert sorted(p.name for p in output.glob("*_erlang.json")) == [
        "300.0_erlang.json", "400.0_erlang.json", "500.0_erlang.json"
    ]
    events = [json.loads(line) for line in
              (daemon.run_dir(run_id) / "progress.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "complete"


def test_cancel_while_the_pool_runs_leaves_no_worker(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(sim_command=REFSIM).start()
    client = Client(daemon.database)
    run_id = client.submit(refsim_config(num_requests=10_000_000, max_iters=5))
    shim = wait_until(lambda: (row := client.row(run_id)) and row["pid"], 15, "the run's start")

    def tree() -> list[psutil.Process]:
        # shim -> simulation -> its pool workers (two on this machine, or more)
        processes = psutil.Process(shim).children(recursive=True)
        return processes if len(processes) >= 3 else []

    processes = wait_until(tree, 15, "the pool's workers")
    client.cancel(run_id)

    row = client.wait_final(run_id, timeout=15)
    assert row["status"] == "CANCELLED"
    assert [p.pid for p in processes if alive(p.pid)] == []
    assert not alive(shim)
