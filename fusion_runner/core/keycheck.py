"""Which keys of a configuration FUSION does not know, each with the closest known one.

A typo such as `general_settings.erlang_stp` would otherwise be accepted and
silently ignored by the simulation. The known keys are those of FUSION's
templates in the shipped data (`fusion_runner/data/*.ini`), those the
reference simulation reads (`fusion_runner/refsim/settings.py`, read as text:
core imports nothing of refsim) and `[slurm] cpus_per_task, mem` (the Slurm
executor's). Everything but `shipped_keys` is pure.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fusion_runner.core import inifile
from fusion_runner.core.errors import InvalidRun

PACKAGE = Path(__file__).resolve().parent.parent
DATA_DIR = PACKAGE / "data"
REFSIM_SETTINGS = PACKAGE / "refsim" / "settings.py"
EXECUTOR_KEYS = frozenset({("slurm", "cpus_per_task"), ("slurm", "mem")})
CUTOFF = 0.6  # difflib's similarity below which no key is suggested

Key = tuple[str, str]  # (section, key)


@dataclass(frozen=True)
class UnknownKey:
    section: str
    key: str
    suggestion: Key | None  # the closest known (section, key), if any is close

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def message(self) -> str:
        text = f"{self.name} is not a key FUSION knows"
        if self.suggestion is not None:
            text += f"; did you mean {'.'.join(self.suggestion)}?"
        return text


def unknown_keys(
    config: Mapping[str, Mapping[str, object]], known: frozenset[Key]
) -> list[UnknownKey]:
    """The keys of `config` that are not in `known`, in the config's order."""
    return [UnknownKey(section, key, closest(section, key, known))
            for section, options in config.items() for key in options
            if (section, key) not in known]


def closest(section: str, key: str, known: frozenset[Key]) -> Key | None:
    """The known key most like `section.key`: the same key in another section first,
    then the closest key of the same section, then the closest `section.key` overall."""
    elsewhere = sorted(other for other in known if other[1] == key)
    if elsewhere:
        return elsewhere[0]
    same_section = sorted(name for other, name in known if other == section)
    match = difflib.get_close_matches(key, same_section, n=1, cutoff=CUTOFF)
    if match:
        return section, match[0]
    dotted = {f"{s}.{k}": (s, k) for s, k in known}
    match = difflib.get_close_matches(f"{section}.{key}", sorted(dotted), n=1, cutoff=CUTOFF)
    return dotted[match[0]] if match else None


def keys_of(config: Mapping[str, Mapping[str, object]]) -> frozenset[Key]:
    return frozenset((section, key) for section, options in config.items() for key in options)


def keys_read_by(source: str) -> frozenset[Key]:
    """The (section, key) pairs a settings module reads: every call with a section
    constant (a module-level string ending in `_settings`) followed by a literal key,
    as `_number(parser, GENERAL, "max_iters", int, 1)` or `parser.has_option(GENERAL, "seed")`."""
    tree = ast.parse(source)
    sections: dict[str, str] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                and node.value.value.endswith("_settings")):
            sections[node.targets[0].id] = node.value.value
    found: set[Key] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        for first, second in zip(call.args, call.args[1:], strict=False):
            if (isinstance(first, ast.Name) and first.id in sections
                    and isinstance(second, ast.Constant) and isinstance(second.value, str)):
                found.add((sections[first.id], second.value))
    return frozenset(found)


@functools.cache
def shipped_keys() -> frozenset[Key]:
    """The keys FUSION knows, as far as this package can tell (see the module's text)."""
    known: set[Key] = set(EXECUTOR_KEYS)
    for template in sorted(DATA_DIR.glob("*.ini")):
        try:
            known |= keys_of(inifile.read_ini(template))
        except InvalidRun:
            continue
    with contextlib.suppress(OSError, SyntaxError, ValueError):  # then the templates' alone
        known |= keys_read_by(REFSIM_SETTINGS.read_text(encoding="utf-8"))
    return frozenset(known)


def check(configs: Iterable[Mapping[str, Mapping[str, object]]]) -> list[UnknownKey]:
    """The unknown keys of several configurations, each once, in first-seen order."""
    known = shipped_keys()
    seen: dict[Key, UnknownKey] = {}
    for config in configs:
        for finding in unknown_keys(config, known):
            seen.setdefault((finding.section, finding.key), finding)
    return list(seen.values())
