"""refsim's pure parts: first fit, k shortest paths, the t interval, the settings."""

from __future__ import annotations

import configparser
import math
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusion_runner.refsim import engine, settings, stats, topology
from fusion_runner.refsim.settings import Demand, Settings, SettingsError

GENERAL: dict[str, str] = {
    "erlang_start": "300", "erlang_stop": "500", "erlang_step": "100", "max_iters": "2",
    "num_requests": "100", "holding_time": "0.2", "guard_slots": "1",
    "request_distribution": '{"25": 0.1, "50": 0.1, "100": 0.5, "200": 0.2, "400": 0.1}',
    "route_method": "k_shortest_path", "allocation_method": "first_fit", "thread_num": "s1",
}  # fmt: skip
pytestmark = pytest.mark.timeout(60)

SECTIONS: dict[str, dict[str, str]] = {
    "general_settings": GENERAL,
    "topology_settings": {"network": "NSFNet", "bw_per_slot": "12.5", "cores_per_link": "3"},
    "routing_settings": {"k_paths": "3"},
    "spectrum_settings": {"c_band": "320"},
}


def parse(**changes: str | None) -> Settings:
    """The minimal template's settings, with `section.key` changed (None removes it)."""
    sections = {name: dict(values) for name, values in SECTIONS.items()}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        sections[section].pop(key, None)
        if value is not None:
            sections[section][key] = value
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict(sections)
    return settings.parse(parser)


# --- first fit ------------------------------------------------------------------------------


def brute_first_fit(used: int, width: int, c_band: int) -> int:
    for start in range(c_band - width + 1):
        block = ((1 << width) - 1) << start
        if not used & block:
            return block
    return 0


@pytest.mark.parametrize(
    ("used", "width", "c_band", "start"),
    [
        (0, 3, 10, 0),
        (0b111, 2, 10, 3),
        (0b10, 2, 10, 2),  # slot 0 alone is too narrow
        (0b0011111111, 2, 10, 8),
        (0b0011111111, 3, 10, None),
        (0, 11, 10, None),
        (0b1111111111, 1, 10, None),
    ],
)
def test_first_fit_finds_the_lowest_free_block(
    used: int, width: int, c_band: int, start: int | None
) -> None:
    expected = 0 if start is None else ((1 << width) - 1) << start
    assert engine.first_fit(used, width, (1 << c_band) - 1) == expected


@given(st.integers(1, 40), st.data())
def test_first_fit_agrees_with_a_slot_by_slot_scan(c_band: int, data: st.DataObject) -> None:
    used = data.draw(st.integers(0, (1 << c_band) - 1))
    width = data.draw(st.integers(1, c_band + 1))
    assert engine.first_fit(used, width, (1 << c_band) - 1) == brute_first_fit(used, width, c_band)


def test_place_takes_the_next_route_when_the_first_is_full() -> None:
    occupancy = [0b1111, 0, 0]
    assert engine.place(((0, 1), (2,)), occupancy, 4, 0b1111) == ((2,), 0b1111)
    assert engine.place(((0, 1),), occupancy, 1, 0b1111) is None


# --- routes ---------------------------------------------------------------------------------


def all_path_lengths(links: tuple[topology.Link, ...], source: int, target: int) -> list[float]:
    """Every simple path's length, by exhaustive depth-first search."""
    lengths: list[float] = []

    def walk(node: int, seen: set[int], length: float) -> None:
        if node == target:
            lengths.append(length)
            return
        for a, b, weight in links:
            for here, there in ((a, b), (b, a)):
                if here == node and there not in seen:
                    walk(there, seen | {there}, length + weight)

    walk(source, {source}, 0.0)
    return sorted(lengths)


def test_nsfnet_routes_are_the_k_shortest_simple_paths() -> None:
    network = topology.build("NSFNet", 3)
    assert (network.num_nodes, len(network.links)) == (14, 22)
    for source in range(14):
        for target in range(14):
            routes = network.routes[source * 14 + target]
            if source == target:
                assert routes == ()
                continue
            lengths = [sum(network.links[link][2] for link in route) for route in routes]
            assert lengths == all_path_lengths(network.links, source, target)[:3]
            assert all(len(set(route)) == len(route) for route in routes)


def test_single_link_has_one_route_each_way() -> None:
    network = topology.build("single_link", 3)
    assert network.routes == ((), ((0,),), ((0,),), ())


def test_unknown_topology_names_the_key() -> None:
    with pytest.raises(SettingsError) as raised:
        topology.build("Atlantis", 3)
    assert raised.value.key == "topology_settings.network"


# --- statistics -----------------------------------------------------------------------------


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (4, 2.776), (31, 2.040), (120, 1.980)])
def test_t_quantile(df: int, quantile: float) -> None:
    assert stats.t_975(df) == pytest.approx(quantile, abs=1e-3)


def test_mean_ci_is_a_student_t_interval() -> None:
    mean, lower, upper = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.303 / math.sqrt(3)
    assert (mean, lower, upper) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert stats.mean_ci([0.25]) == (0.25, 0.25, 0.25)


def test_fusion_blocking_is_fusions_interval() -> None:
    # Sample variance 0.0001; FUSION: 1.645 * sqrt(var / n), and twice that in % of the mean.
    keys = stats.fusion_blocking([0.09, 0.10, 0.11], 0.10)
    rate = 1.645 * 0.01 / math.sqrt(3)
    assert keys == pytest.approx({
        "blocking_mean": 0.10, "blocking_variance": 0.0001,
        "ci_rate_block": rate, "ci_percent_block": 2 * rate / 0.10 * 100,
    })  # fmt: skip


def test_fusion_blocking_has_no_interval_from_one_iteration_or_without_blocking() -> None:
    assert stats.fusion_blocking([0.2], 0.2) == {
        "blocking_mean": 0.2, "blocking_variance": None,
        "ci_rate_block": None, "ci_percent_block": None,
    }  # fmt: skip
    assert stats.fusion_blocking([0.0, 0.0], 0.0) == {
        "blocking_mean": 0.0, "blocking_variance": 0.0,
        "ci_rate_block": None, "ci_percent_block": None,
    }  # fmt: skip


# --- settings -------------------------------------------------------------------------------


def test_minimal_template_settings() -> None:
    parsed = parse()
    assert parsed.erlangs == (300.0, 400.0, 500.0)
    assert [(d.gbps, d.slots) for d in parsed.demands] == [
        (25.0, 3), (50.0, 5), (100.0, 9), (200.0, 17), (400.0, 33)
    ]
    assert (parsed.max_iters, parsed.num_requests, parsed.holding_time) == (2, 100, 0.2)
    assert (parsed.network, parsed.k_paths, parsed.c_band, parsed.seed) == ("NSFNet", 3, 320, 0)


def test_erlang_points_are_inclusive_and_tidy() -> None:
    changes = {"erlang_start": "0.1", "erlang_stop": "0.5", "erlang_step": "0.2"}
    assert parse(**{f"general_settings__{k}": v for k, v in changes.items()}).erlangs == (
        0.1, 0.3, 0.5
    )
    assert parse(general_settings__erlang_stop="300").erlangs == (300.0,)


DISTRIBUTION = "general_settings.request_distribution"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("general_settings.num_requests", None),
        ("general_settings.erlang_stop", "200"),
        ("general_settings.erlang_step", "0"),
        ("general_settings.erlang_start", "nan"),
        ("general_settings.max_iters", "two"),
        ("general_settings.seed", "-1"),
        ("general_settings.route_method", "ksp"),
        ("general_settings.allocation_method", "best_fit"),
        (DISTRIBUTION, "{"),
        (DISTRIBUTION, "[1]"),
        (DISTRIBUTION, '{"x": 1}'),
        (DISTRIBUTION, '{"100": 0.5}'),
        (DISTRIBUTION, '{"100": true}'),
        ("topology_settings.bw_per_slot", "0"),
        ("spectrum_settings.c_band", "0"),
        ("routing_settings.k_paths", None),
    ],
)
def test_bad_settings_name_their_key(key: str, value: str | None) -> None:
    with pytest.raises(SettingsError) as raised:
        parse(**{key.replace(".", "__"): value})
    assert raised.value.key == key
    assert str(raised.value).startswith(key + ": ")


# --- one iteration --------------------------------------------------------------------------


def blocked(parsed: Settings, erlang: float, seed: int = 1, network: str = "NSFNet") -> int:
    return engine.blocked_requests(
        parsed, topology.build(network, parsed.k_paths), erlang, random.Random(seed)
    )


def test_iterations_are_reproducible_and_depend_on_the_seed() -> None:
    parsed = replace(parse(), num_requests=2000)
    assert blocked(parsed, 400, seed=1) == blocked(parsed, 400, seed=1)
    assert any(blocked(parsed, 400, seed) != blocked(parsed, 400, 1) for seed in range(2, 6))


def test_blocking_follows_load_and_spectrum() -> None:
    parsed = replace(parse(), num_requests=2000)
    assert blocked(parsed, 1.0) == 0
    assert 0 < blocked(parsed, 300.0) < blocked(parsed, 900.0) < 2000
    too_wide = (Demand(400.0, 1.0, 33),)
    assert blocked(replace(parsed, c_band=32, demands=too_wide), 1.0) == 2000
