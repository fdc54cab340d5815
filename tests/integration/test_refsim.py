"""`python -m fusion_runner.refsim` as the daemon runs it: a real process, real files."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from fusion_runner.core import results
from fusion_runner.refsim import cli, engine
from tests.conftest import alive, kill_quietly, wait_until

pytestmark = pytest.mark.timeout(60)

SECTIONS: dict[str, dict[str, str]] = {
    "general_settings": {
        "erlang_start": "300", "erlang_stop": "400", "erlang_step": "100", "max_iters": "2",
        "num_requests": "100", "holding_time": "0.2", "guard_slots": "1",
        "request_distribution": '{"25": 0.1, "50": 0.1, "100": 0.5, "200": 0.2, "400": 0.1}',
        "route_method": "k_shortest_path", "allocation_method": "first_fit",
        "thread_num": "s1", "mod_assumption": "DEFAULT", "seed": "11",
    },
    "topology_settings": {"network": "NSFNet", "bw_per_slot": "12.5", "cores_per_link": "3"},
    "routing_settings": {"k_paths": "3"},
    "spectrum_settings": {"c_band": "320", "guard_slots": "1"},
    "snr_settings": {"requested_xt": '{"QPSK": -26.19}'},
}  # fmt: skip
# Erlang B: one link of C = 10 slots, one-slot requests.
ERLANG_B = {
    "general_settings.request_distribution": '{"12.5": 1.0}',
    "general_settings.guard_slots": "0",
    "general_settings.erlang_start": "5", "general_settings.erlang_stop": "11",
    "general_settings.erlang_step": "3", "general_settings.holding_time": "1.0",
    "general_settings.num_requests": "20000", "general_settings.max_iters": "8",
    "general_settings.seed": "2024",
    "topology_settings.network": "single_link", "spectrum_settings.c_band": "10",
}  # fmt: skip


class Sim:
    """One refsim process with its config, progress file and output dir in `root`."""

    def __init__(self, root: Path, changes: Mapping[str, str | None]) -> None:
        self.root, self.config = root, root / "config.ini"
        self.progress, self.output = root / "progress.jsonl", root / "output"
        self.config.write_text(ini_text(changes))
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "fusion_runner.refsim", "--config", str(self.config),
                "--progress-file", str(self.progress), "--output-dir", str(self.output)]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.root
        )
        return self.process

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        assert self.process is not None
        _, stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode, stderr

    def events(self) -> list[dict[str, Any]]:
        lines = self.progress.read_text().splitlines() if self.progress.exists() else []
        return [json.loads(line) for line in lines]

    def output_file(self, erlang: float) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.output / f"{erlang!r}_erlang.json").read_text())
        return document


def ini_text(changes: Mapping[str, str | None]) -> str:
    sections = {name: dict(values) for name, values in SECTIONS.items()}
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        sections[section].pop(key, None)
        if value is not None:
            sections[section][key] = value
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
        for name, values in sections.items()
    )


SimFactory = Callable[[Mapping[str, str | None]], Sim]


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[SimFactory]:
    """Makes Sims in their own folders; afterwards kills any still running, by pid."""
    made: list[Sim] = []

    def make(changes: Mapping[str, str | None]) -> Sim:
        root = tmp_path / f"sim{len(made)}"
        root.mkdir()
        made.append(Sim(root, changes))
        return made[-1]

    yield make
    for sim in made:
        if sim.process is not None and sim.process.poll() is None:
            kill_quietly(sim.process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sim.process.communicate(timeout=5)


def run(sim_factory: SimFactory, changes: Mapping[str, str | None]) -> tuple[Sim, int, str]:
    sim = sim_factory(changes)
    sim.start()
    code, stderr = sim.finish()
    return sim, code, stderr


def erlang_b(load: float, servers: int) -> float:
    blocking = 1.0
    for count in range(1, servers + 1):
        blocking = load * blocking / (count + load * blocking)
    return blocking


def test_erlang_b_formula_used_here() -> None:
    assert [round(erlang_b(load, 10), 4) for load in (5, 8, 10)] == [0.0184, 0.1217, 0.2146]


def test_blocking_on_one_link_matches_erlang_b(sim_factory: SimFactory) -> None:
    sim, code, stderr = run(sim_factory, dict(ERLANG_B))

    assert code == 0, stderr
    completed = [event for event in sim.events() if event["type"] == "erlang_complete"]
    assert sorted(event["erlang"] for event in completed) == [5.0, 8.0, 11.0]
    for event in completed:
        expected, metrics = erlang_b(event["erlang"], 10), event["metrics"]
        assert metrics["ci_lower"] <= expected <= metrics["ci_upper"], (expected, metrics)
        assert metrics["ci_upper"] - metrics["ci_lower"] < 0.3 * expected  # a real test


def test_progress_events_in_order_and_outputs(sim_factory: SimFactory) -> None:
    sim, code, stderr = run(sim_factory, {})

    assert (code, stderr) == (0, "")
    events = sim.events()
    assert all(isinstance(event["timestamp"], float) for event in events)
    start, complete = events[0], events[-1]
    assert start["type"] == "start"
    assert start["config"] == {"total_erlangs": 2, "total_iterations": 2}
    assert (start["total_erlangs"], start["total_iterations"]) == (2, 2)
    assert (complete["type"], complete["exit_code"]) == ("complete", 0)
    summary = complete["summary"]
    assert summary["requests_per_second"] > 0 and summary["total_requests"] == 400
    for index, erlang in enumerate((300.0, 400.0)):
        own = [event for event in events[1:-1] if event["erlang"] == erlang]
        assert [event["type"] for event in own] == [
            "erlang_start", "iteration", "iteration", "erlang_complete"
        ]
        assert (own[0]["erlang_index"], own[0]["total_erlangs"]) == (index, 2)
        assert [(e["iteration"], e["total_iterations"]) for e in own[1:3]] == [(1, 2), (2, 2)]
        check_point(sim, erlang, own, summary)
    assert len(events) == 2 + 2 * 4


def check_point(sim: Sim, erlang: float, own: list[dict[str, Any]], summary: Any) -> None:
    blocking = [event["metrics"]["blocking_prob"] for event in own[1:3]]
    metrics = own[3]["metrics"]
    assert metrics["mean_blocking"] == pytest.approx(sum(blocking) / 2)
    assert 0 <= metrics["ci_lower"] <= metrics["mean_blocking"] <= metrics["ci_upper"] <= 1
    assert summary["mean_blocking"][repr(erlang)] == metrics["mean_blocking"]
    document = sim.output_file(erlang)
    assert [item["blocking_prob"] for item in document["iterations"]] == blocking
    assert (document["blocking_mean"], document["ci_upper"]) == (
        metrics["mean_blocking"], metrics["ci_upper"]
    )


def test_outputs_carry_fusions_keys_and_read_like_fusions(sim_factory: SimFactory) -> None:
    # One small link, so that every iteration blocks some requests and has an interval.
    changes = ERLANG_B | {
        "general_settings.num_requests": "2000", "general_settings.max_iters": "3",
        "general_settings.erlang_stop": "8",
    }  # fmt: skip
    sim, code, stderr = run(sim_factory, changes)

    assert code == 0, stderr
    points = results.read_points(sim.output)
    assert [point.erlang for point in points] == [5.0, 8.0]
    for point in points:
        document = sim.output_file(point.erlang)
        blocking = [item["blocking_prob"] for item in document["iterations"]]
        assert document["iter_stats"] == {
            "0": {"sim_block_list": blocking[:1]}, "1": {"sim_block_list": blocking[:2]},
            "2": {"sim_block_list": blocking},
        }  # fmt: skip
        assert re.fullmatch(r"\d{4}_\d\d_\d\d_\d\d_\d{6}", document["sim_end_time"])
        rate = 1.645 * statistics.stdev(blocking) / math.sqrt(3)
        assert (document["blocking_variance"], document["ci_rate_block"]) == pytest.approx(
            (statistics.variance(blocking), rate)
        )
        assert document["ci_percent_block"] == pytest.approx(200 * rate / document["blocking_mean"])
        assert point == results.ErlangPoint(
            erlang=point.erlang, blocking_mean=document["blocking_mean"],
            blocking_variance=document["blocking_variance"],
            ci_rate_block=document["ci_rate_block"], ci_percent_block=document["ci_percent_block"],
            iterations=3, block_list=tuple(blocking), sim_end_time=document["sim_end_time"],
            path=sim.output / f"{point.erlang!r}_erlang.json",
        )  # fmt: skip


def blocking_by_point(sim: Sim) -> list[tuple[float, list[float]]]:
    return [
        (erlang, [item["blocking_prob"] for item in sim.output_file(erlang)["iterations"]])
        for erlang in (300.0, 400.0)
    ]


def test_same_seed_same_results_other_seed_others(sim_factory: SimFactory) -> None:
    runs = []
    for seed in ("5", "5", "6"):
        changes = {"general_settings.num_requests": "1000", "general_settings.seed": seed}
        sim, code, stderr = run(sim_factory, changes)
        assert code == 0, stderr
        runs.append(blocking_by_point(sim))

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert any(value > 0 for _, values in runs[0] for value in values)


@contextlib.contextmanager
def running_with_workers(
    sim_factory: SimFactory,
) -> Iterator[tuple[Sim, subprocess.Popen[str], list[psutil.Process]]]:
    """A sweep that runs for minutes, once its workers have started; they are killed after."""
    sim = sim_factory({"general_settings.num_requests": "100000000"})
    process = sim.start()
    workers_expected = min(os.cpu_count() or 1, 2)
    workers: list[psutil.Process] = []
    try:
        wait_until(lambda: started_points(sim) == workers_expected, 10, "the workers to start")
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) == workers_expected
        yield sim, process, workers
    finally:
        for worker in workers:
            kill_quietly(worker.pid)


def test_sigterm_stops_the_pool_and_exits_143(sim_factory: SimFactory) -> None:
    with running_with_workers(sim_factory) as (sim, process, workers):
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code, stderr = sim.finish(timeout=10)

        assert (code, time.monotonic() - began < 3.0) == (143, True)
        last = sim.events()[-1]
        assert (last["type"], last["message"]) == ("error", "terminated by SIGTERM")
        assert "SIGTERM" in stderr
        wait_until(lambda: not any(alive(worker.pid) for worker in workers), 5, "workers to end")


def started_points(sim: Sim) -> int:
    return sum(event["type"] == "erlang_start" for event in sim.events())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("general_settings.num_requests", None),
        ("general_settings.erlang_stop", "200"),
        ("general_settings.erlang_step", "0"),
        ("general_settings.erlang_step", "-100"),
        ("topology_settings.network", "Atlantis"),
        ("general_settings.request_distribution", '{"100": 0.5, "400": "half"}'),
        ("general_settings.request_distribution", "100G"),
    ],
)
def test_bad_configuration_exits_2_naming_the_key(
    sim_factory: SimFactory, key: str, value: str | None
) -> None:
    sim, code, stderr = run(sim_factory, {key: value})

    assert code == 2
    assert stderr.count("\n") == 1 and key in stderr
    last = sim.events()[-1]
    assert (last["type"], last["key"]) == ("error", key)
    assert key in last["message"]
    assert not sim.output.exists() or not any(sim.output.iterdir())


def test_unreadable_config_exits_2(sim_factory: SimFactory) -> None:
    sim = sim_factory({})
    sim.config.unlink()
    sim.start()
    code, stderr = sim.finish()

    assert code == 2 and "--config" in stderr
    assert sim.events()[-1]["key"] == "--config"


def test_a_crash_writes_an_error_event_and_exits_1(sim_factory: SimFactory) -> None:
    sim = sim_factory({})
    sim.output.write_text("a file where the output folder should be")
    sim.start()
    code, stderr = sim.finish()

    assert code == 1 and "refsim: " in stderr
    last = sim.events()[-1]
    assert last["type"] == "error" and last["message"].startswith("FileExistsError")
    assert "Traceback (most recent call last)" in last["traceback"]


def test_a_worker_crash_ends_the_run_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, so the fork-context workers inherit the broken engine."""

    def broken(*_: object) -> int:
        raise ZeroDivisionError("broken engine")

    monkeypatch.setattr(engine, "blocked_requests", broken)
    sim = Sim(tmp_path, {})
    handlers = [signal.getsignal(signum) for signum in cli.STOP_SIGNALS]
    argv = ["--config", str(sim.config), "--progress-file", str(sim.progress)]

    assert cli.main([*argv, "--output-dir", str(sim.output)]) == 1
    assert [signal.getsignal(signum) for signum in cli.STOP_SIGNALS] == handlers
    last = sim.events()[-1]
    assert (last["type"], last["message"]) == ("error", "ZeroDivisionError: broken engine")
    assert "broken engine" in last["traceback"]


def test_a_killed_worker_ends_the_run_at_once_with_exit_1(sim_factory: SimFactory) -> None:
    """The out-of-memory killer's SIGKILL: the standard-library Pool would wait forever."""
    with running_with_workers(sim_factory) as (sim, _process, workers):
        victim = workers[-1]

        victim.kill()
        began = time.monotonic()
        code, stderr = sim.finish(timeout=10)

        assert (code, time.monotonic() - began < 3.0) == (1, True)
        last = sim.events()[-1]
        assert last["type"] == "error"
        died = rf"worker process {victim.pid} for (300|400)\.0 Erlang died"
        assert re.fullmatch(died + r" \(killed by signal SIGKILL\)", last["message"]), last

        assert stderr == f"refsim: {last['message']}\n"
        assert "complete" not in [event["type"] for event in sim.events()]
        wait_until(lambda: not any(alive(worker.pid) for worker in workers), 5, "workers to end")


def in_process(sim: Sim) -> int:
    """cli.main in this process, so that the forked workers inherit a monkeypatched engine."""
    argv = ["--config", str(sim.config), "--progress-file", str(sim.progress)]
    return cli.main([*argv, "--output-dir", str(sim.output)])


def test_a_worker_that_exits_without_reporting_ends_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def vanish(*_: object) -> int:
        os._exit(3)

    monkeypatch.setattr(engine, "blocked_requests", vanish)
    sim = Sim(tmp_path, {})

    assert in_process(sim) == 1
    last = sim.events()[-1]
    assert last["type"] == "error"
    assert re.fullmatch(
        r"worker process \d+ for (300|400)\.0 Erlang died \(exit status 3\)", last["message"]
    ), last["message"]
    assert multiprocessing.active_children() == []


def test_points_beyond_the_cpus_wait_for_a_free_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    sim = Sim(tmp_path, {"general_settings.erlang_stop": "500"})

    assert in_process(sim) == 0
    events = sim.events()
    one_at_a_time = [
        (erlang, kind)
        for erlang in (300.0, 400.0, 500.0)
        for kind in ("erlang_start", "iteration", "iteration", "erlang_complete")
    ]
    assert [(event["erlang"], event["type"]) for event in events[1:-1]] == one_at_a_time
    assert events[-1]["type"] == "complete"
    assert sorted(events[-1]["summary"]["mean_blocking"]) == ["300.0", "400.0", "500.0"]
    assert multiprocessing.active_children() == []
