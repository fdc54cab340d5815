"""core/cores.py: the cores a run takes, counted from its configuration."""

from __future__ import annotations

import configparser

from fusion_runner.core import config as config_module
from fusion_runner.core import cores
from fusion_runner.refsim import settings as refsim_settings
from fusion_runner.refsim import sweep

SWEEP = {"erlang_start": 300, "erlang_stop": 500, "erlang_step": 100}  # 3 points


def count(general: dict[str, object], *, refsim: bool = False, cpus: int = 8) -> int:
    return cores.run_cores({"general_settings": general}, refsim=refsim, cpus=cpus)


def test_the_reference_simulation_takes_a_worker_per_point_at_most_one_per_cpu() -> None:
    assert count(SWEEP, refsim=True, cpus=8) == 3
    assert count(SWEEP, refsim=True, cpus=2) == 2
    assert count({**SWEEP, "erlang_stop": 300}, refsim=True) == 1
    # FUSION's key is not read by the reference simulation, nor counted for it.
    assert count({**SWEEP, "thread_erlangs": False}, refsim=True, cpus=8) == 3


def test_max_processes_overrides_and_is_capped_by_the_points() -> None:
    assert count({**SWEEP, "max_processes": 2}, refsim=True, cpus=8) == 2
    assert count({**SWEEP, "max_processes": 16}, refsim=True, cpus=8) == 3
    assert count({**SWEEP, "max_processes": "2"}, refsim=True) == 2  # INI text
    assert count({"max_processes": 6}) == 6  # no Erlang range: as declared
    assert count({**SWEEP, "max_processes": 6, "thread_erlangs": False}) == 3
    for bad in (0, -1, "two", True, 1.5):
        assert count({**SWEEP, "max_processes": bad}, refsim=True, cpus=8) == 3


def test_fusion_thread_erlangs_and_anything_else() -> None:
    assert count({**SWEEP, "thread_erlangs": True}, cpus=8) == 3
    assert count({**SWEEP, "thread_erlangs": "True"}, cpus=2) == 2
    assert count({**SWEEP, "thread_erlangs": False}) == 1
    assert count({"thread_erlangs": True}, cpus=4) == 4  # no range: the pool's size
    assert count(SWEEP) == 1
    assert cores.run_cores({}, refsim=False, cpus=8) == 1
    assert cores.run_cores({}, refsim=True, cpus=8) == 1
    assert count({"erlang_start": "x", "erlang_step": 0}, refsim=True) == 1


def test_the_rule_is_the_reference_simulations_own() -> None:
    text = """[general_settings]
erlang_start = 100
erlang_stop = 400
erlang_step = 100
max_iters = 1
num_requests = 1
holding_time = 1
guard_slots = 0
route_method = k_shortest_path
allocation_method = first_fit
request_distribution = {"100": 1.0}
max_processes = 3
[topology_settings]
network = NSFNet
bw_per_slot = 12.5
[routing_settings]
k_paths = 1
[spectrum_settings]
c_band = 10
"""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    settings = refsim_settings.parse(parser)
    assert settings.max_processes == 3
    assert cores.workers(len(settings.erlangs), 8, settings.max_processes) == 3
    general = dict(parser["general_settings"])
    assert count(general, refsim=True, cpus=8) == 3
    assert sweep.usable_cpus() == cores.usable_cpus()


def test_is_refsim_and_the_default_max_cores() -> None:
    assert cores.is_refsim(config_module.DEFAULT_SIM_COMMAND)
    assert not cores.is_refsim(("{python}", "-m", "fusion.cli.run_sim", "run_sim"))
    assert config_module.Config().max_cores >= 1
