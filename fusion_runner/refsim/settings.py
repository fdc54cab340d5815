"""FUSION's INI keys -> one frozen `Settings`; one `SettingsError` naming the bad key.

Only the keys the reference simulation uses are read; every other key is ignored.
"""

from __future__ import annotations

import configparser
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

GENERAL = "general_settings"
TOPOLOGY = "topology_settings"
ROUTING = "routing_settings"
SPECTRUM = "spectrum_settings"
ROUTE_METHODS = ("k_shortest_path",)
ALLOCATION_METHODS = ("first_fit",)
DEFAULT_SEED = 0
_EPSILON = 1e-9

Number = TypeVar("Number", int, float)


class SettingsError(Exception):
    """A configuration value the simulation cannot run with; `key` is `section.key`."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Demand:
    """One bandwidth class of request_distribution and the slots it occupies."""

    gbps: float
    probability: float
    slots: int  # ceil(gbps / bw_per_slot) + guard_slots


@dataclass(frozen=True)
class Settings:
    erlangs: tuple[float, ...]
    max_iters: int
    num_requests: int
    holding_time: float
    demands: tuple[Demand, ...]
    network: str
    k_paths: int
    c_band: int
    seed: int
    # [general_settings] max_processes: at most this many worker processes at once
    # (None: one per usable CPU); the daemon counts a run's cores by it (core/cores.py).
    max_processes: int | None = None


def load(path: Path) -> Settings:
    """Read and check the INI file at `path`."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise SettingsError("--config", f"cannot read {path}: {exc}") from exc
    return parse(parser)


def parse(parser: configparser.ConfigParser) -> Settings:
    _choice(parser, GENERAL, "route_method", ROUTE_METHODS)
    _choice(parser, GENERAL, "allocation_method", ALLOCATION_METHODS)
    has_seed = parser.has_option(GENERAL, "seed")
    seed = _number(parser, GENERAL, "seed", int, 0) if has_seed else DEFAULT_SEED
    has_limit = parser.has_option(GENERAL, "max_processes")
    max_processes = _number(parser, GENERAL, "max_processes", int, 1) if has_limit else None
    return Settings(
        erlangs=erlang_points(parser),
        max_iters=_number(parser, GENERAL, "max_iters", int, 1),
        num_requests=_number(parser, GENERAL, "num_requests", int, 1),
        holding_time=_positive(parser, GENERAL, "holding_time"),
        demands=demands(parser),
        network=_text(parser, TOPOLOGY, "network"),
        k_paths=_number(parser, ROUTING, "k_paths", int, 1),
        c_band=_number(parser, SPECTRUM, "c_band", int, 1),
        seed=seed,
        max_processes=max_processes,
    )


def erlang_points(parser: configparser.ConfigParser) -> tuple[float, ...]:
    """erlang_start..erlang_stop inclusive by erlang_step."""
    start = _positive(parser, GENERAL, "erlang_start")
    stop = _number(parser, GENERAL, "erlang_stop", float, start)
    step = _positive(parser, GENERAL, "erlang_step")
    count = math.floor((stop - start) / step + _EPSILON) + 1
    return tuple(round(start + index * step, 9) for index in range(count))


def demands(parser: configparser.ConfigParser) -> tuple[Demand, ...]:
    """request_distribution (JSON object Gbps -> probability) as slot demands."""
    key = f"{GENERAL}.request_distribution"
    bw_per_slot = _positive(parser, TOPOLOGY, "bw_per_slot")
    guard_slots = _number(parser, GENERAL, "guard_slots", int, 0)
    try:
        distribution = json.loads(_text(parser, GENERAL, "request_distribution"))
    except ValueError as exc:
        raise SettingsError(key, f"not JSON: {exc}") from exc
    if not isinstance(distribution, dict) or not distribution:
        raise SettingsError(key, "must be a non-empty JSON object of Gbps -> probability")
    classes = tuple(_demand(key, name, share) for name, share in distribution.items())
    if abs(sum(demand.probability for demand in classes) - 1.0) > 1e-6:
        raise SettingsError(key, "probabilities must sum to 1")
    return tuple(
        Demand(d.gbps, d.probability, math.ceil(d.gbps / bw_per_slot - _EPSILON) + guard_slots)
        for d in classes
    )


def _demand(key: str, name: str, share: object) -> Demand:
    gbps = _finite(name)
    if gbps is None or gbps <= 0:
        raise SettingsError(key, f"bandwidth {name!r} is not a positive number")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise SettingsError(key, f"probability of {name!r} is not in [0, 1]")
    return Demand(gbps, float(share), 0)


def _text(parser: configparser.ConfigParser, section: str, key: str) -> str:
    if not parser.has_option(section, key):
        raise SettingsError(f"{section}.{key}", "missing")
    return parser.get(section, key).strip()


def _choice(
    parser: configparser.ConfigParser, section: str, key: str, choices: tuple[str, ...]
) -> str:
    value = _text(parser, section, key)
    if value not in choices:
        raise SettingsError(f"{section}.{key}", f"{value!r} is not one of {', '.join(choices)}")
    return value


def _number(
    parser: configparser.ConfigParser,
    section: str,
    key: str,
    kind: type[Number],
    minimum: Number,
) -> Number:
    text = _text(parser, section, key)
    try:
        value = kind(text)
    except ValueError:
        raise SettingsError(f"{section}.{key}", f"{text!r} is not a {kind.__name__}") from None
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{section}.{key}", f"{text} is below the minimum {minimum}")
    return value


def _positive(parser: configparser.ConfigParser, section: str, key: str) -> float:
    value = _number(parser, section, key, float, 0.0)
    if value <= 0:
        raise SettingsError(f"{section}.{key}", f"{value} must be greater than 0")
    return value


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
