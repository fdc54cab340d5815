"""Fuzzed inputs: garbage in the files the daemon reads and the rows and settings it is given.

Each property says what must hold whatever the input: the progress reader never
raises, never holds more than a line's limit and applies every complete line;
a row's config_json is written to config.ini faithfully or refused naming the
culprit, and nothing is ever written outside the run's folder; a configuration
file is resolved or refused naming the key (never a traceback).
"""

from __future__ import annotations

import configparser
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fusion_runner.core import config, progress, rundir
from fusion_runner.core.errors import ConfigError, InvalidRun
from fusion_runner.core.progress import PROGRESS_COLUMNS, Progress, ProgressReader, apply_line

T = TypeVar("T")

def fuzz(examples: int) -> settings:
    # Examples kept few: the whole file runs in well under a minute.
    return settings(deadline=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def folder() -> Iterator[Path]:
    # Not tmp_path: one fresh folder per hypothesis example.
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# --- the progress reader: arbitrary bytes, chunks, truncations, replacements ----------------

LIMIT = 48  # the line-length limit in these examples, so that long lines are common

RECORD_LINES = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["start", "iteration", "error", "complete", "bogus"]),
        "erlang": st.one_of(st.floats(), st.integers(-5, 5), st.text(max_size=2)),
        "iteration": st.one_of(st.integers(-1, 9), st.floats(), st.none()),
        "total_iterations": st.integers(-1, 2**40),
        "message": st.text(max_size=4),
    },
).map(lambda record: json.dumps(record).encode())
CHUNKS = st.one_of(
    st.binary(max_size=24),  # anything: invalid UTF-8, NULs, lone newlines
    st.sampled_from([b"\n", b"\r\n", b"{", b"}\n", b"\xff\xfe\n", b"\x00" * 5, b" " * 60]),
    st.builds(lambda line, end: line + end, RECORD_LINES, st.sampled_from([b"\n", b""])),
)
# What happens to the file between two polls.
ACTIONS = st.one_of(
    st.tuples(st.just("append"), st.lists(CHUNKS, min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),  # to that fraction of its size
    st.tuples(st.just("replace"), st.lists(CHUNKS, max_size=4)),  # a new file, renamed over
    st.tuples(st.just("delete"), st.just([])),
)


def expected_progress(content: bytes) -> Progress:
    """The state the file's complete lines give, lines over the limit skipped."""
    state = Progress()
    for line in content.split(b"\n")[:-1]:
        if len(line) <= LIMIT:
            apply_line(state, line)
    return state


@fuzz(250)
@given(st.lists(ACTIONS, max_size=14), st.integers(1, 64))
# Deleted, then made again longer: on ext4 the new file gets the old inode number back.
@example([("append", [b'{"iteration": 1}\n']), ("delete", []),
          ("append", [b'{"iteration": 2, "erlang": 1.0}\n'])], 64)
def test_the_progress_reader_survives_any_bytes_chunks_truncations_and_replacements(
    actions: list[tuple[str, object]], read_chunk: int
) -> None:
    with folder() as root, pytest.MonkeyPatch.context() as patch:
        # Small limits, so that the examples cross them: lines over the limit, and
        # reads cut anywhere within a poll.
        patch.setattr(progress, "MAX_LINE_BYTES", LIMIT)
        patch.setattr(progress, "READ_CHUNK", read_chunk)
        path = root / "progress.jsonl"
        path.write_bytes(b"")
        reader = ProgressReader(path)
        content = b""
        reported = Progress().columns()
        for action, argument in actions:
            content = change(path, content, action, argument)
            changes = reader.poll()  # never raises, always returns
            if not path.exists():
                assert changes == {}
                continue
            # Every complete line applied (once: the state is the replay's), whatever
            # the chunking, and only the changed columns reported.
            assert reader.progress == expected_progress(content)
            columns = reader.progress.columns()
            assert changes == {k: v for k, v in columns.items() if reported[k] != v}
            assert set(changes) <= set(PROGRESS_COLUMNS)
            reported = columns
            # Memory: the held start of a line never exceeds the limit.
            assert len(reader._pending) <= LIMIT
            assert reader.offset == content.rfind(b"\n") + 1
            assert len(reader.take_problems()) <= progress.MAX_NOTES


def change(path: Path, content: bytes, action: str, argument: object) -> bytes:
    """Do `action` to the file; its content afterwards."""
    if action == "append":
        assert isinstance(argument, list)
        with path.open("ab") as file:
            for chunk in argument:
                file.write(chunk)
                file.flush()
        return (content if path.exists() else b"") + b"".join(argument)
    if action == "truncate":
        assert isinstance(argument, float)
        if not path.exists():
            return b""
        size = int(len(content) * argument)
        os.truncate(path, size)
        return content[:size]
    if action == "replace":
        assert isinstance(argument, list)
        new = path.with_name("new")
        new.write_bytes(b"".join(argument))
        os.replace(new, path)
        return b"".join(argument)
    path.unlink(missing_ok=True)
    return b""


# --- config_json: every JSON shape, hostile strings, through the real rundir.prepare --------

HOSTILE_TEXT = st.sampled_from([
    "%(x)s", "%", "%%", "[section]", "[DEFAULT]", "a = b", "k: v", "# comment", "; comment",
    "line\nbreak", "cr\rlf", "tab\there", "nul\x00", "\x85", "\u2028", "\ud800", " padded ",
    "\u3000", "ünï😀", "DEFAULT", "", "x" * 300_000, "{json}", '"quoted"', "\\", "$HOME",
])
# Printable, INI syntax and `%` included: most pass, so that config.ini gets written often.
PRINTABLE = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs")),
                    min_size=1, max_size=8)


def mostly(common: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`rare` about one draw in eight (one_of would pick it far more often)."""
    return st.integers(1, 8).flatmap(lambda n: rare if n == 8 else common)


TEXT = mostly(PRINTABLE, st.one_of(HOSTILE_TEXT, st.text(max_size=8)))
NAMES = mostly(st.one_of(PRINTABLE, st.sampled_from(["sim", "general_settings", "s"])), TEXT)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
SECTIONS = st.dictionaries(NAMES, st.dictionaries(NAMES, JSON_VALUES, max_size=4), max_size=3)
OTHER_SHAPES = st.one_of(
    st.dictionaries(NAMES, JSON_VALUES, max_size=3),  # sections that may not be objects
    JSON_VALUES,  # not an object at all
)
CONFIG_JSON = st.one_of(
    SECTIONS.map(json.dumps),
    SECTIONS.map(json.dumps),
    SECTIONS.map(lambda value: json.dumps(value, ensure_ascii=False)),
    OTHER_SHAPES.map(json.dumps),
    st.sampled_from([
        "", "{", "nul\x00l", '{"s": {"k": 1}} trailing', "[" * 100_000, '{"s": {"k": ' + "9" * 5000
        + "}}", '{"s": {"k": NaN}}', '{"s": {"k": 1e999}}', '{"s": {"a": 1, "a": 2}}',
        '{"s": {"k": "\\ud800"}}',
    ]),
)
RUN_ID = "0123456789ab"


def ini_text(value: object) -> str:
    """How config.ini must hold a value (SPEC §3)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)  # True, None, 300, 0.2, inf


def read_back(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    # Every section's items as read, defaults included: a [DEFAULT] would show here.
    return {name: dict(parser[name]) for name in parser.sections()}


def short(text: str) -> str:
    """As messages quote a name: at most 80 characters."""
    return text if len(text) <= 80 else text[:77] + "..."


def culprits(config: object) -> list[str]:
    """The openings of the messages that name a part of `config` as what is wrong."""
    found = ["config_json is not valid JSON", "config_json must be a JSON object"]
    if isinstance(config, dict):
        for section, options in config.items():
            found += [f"config_json: section name {short(repr(section))} ",
                      f"config_json: section {short(repr(section))} is not an object"]
            for key in options if isinstance(options, dict) else ():
                found += [f"config_json: key name {short(repr(key))} in section "
                          f"{short(repr(section))} ",
                          f"config_json: value of {short(f'{section}.{key}')} "]
    return found


@fuzz(300)
@given(CONFIG_JSON)
@example('{"DEFAULT": {"a": 1}, "s": {}}')  # configparser's default section
@example('{"s": {"%(x)s": "%(y)s [DEFAULT] a = b", "k%": "[s]", "p": "50%"}}')
@example(json.dumps({"s": {"k": "v" * 1_000_000, "[x]": 1}, "t": {"k": ["\n", "%"]}}))
def test_config_json_is_written_faithfully_or_refused_naming_the_culprit(text: str) -> None:
    with folder() as root:
        runs_dir = root / "runs"
        try:
            paths = rundir.prepare(runs_dir, RUN_ID, text)
        except InvalidRun as refusal:
            message = str(refusal)
            try:
                config = json.loads(text)
            except (ValueError, RecursionError):
                config = None
            assert message.startswith(tuple(culprits(config))), message
            assert len(message) < 400
            assert files_under(root) == set()  # nothing at all was written
            return
        config = json.loads(text)
        assert read_back(paths.config_file) == {
            section: {key: ini_text(value) for key, value in options.items()}
            for section, options in config.items()
        }
        run_dir = runs_dir / RUN_ID
        assert files_under(root) - {runs_dir} == files_under(run_dir) | {run_dir}


ODD_IDS = st.one_of(
    st.sampled_from([
        "", ".", "..", "../../../tmp", "/tmp/abcdefg", "0123456789a", "0123456789abc",
        "0123456789ab\n", "0123456789AB", "01234/6789ab", "01234\\6789ab", "012345678\x00ab",
        "0123456789ab/..", "..0123456789",
        "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669ab",  # Arabic-Indic digits
        "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19ab",  # fullwidth digits
    ]),
    st.text(st.sampled_from("0123456789abcdef./\\\x00\nAé"), max_size=14),
)


@fuzz(150)
@given(ODD_IDS)
def test_an_odd_run_id_writes_nothing_anywhere(run_id: str) -> None:
    with folder() as root:
        runs_dir = root / "a" / "runs"
        try:
            paths = rundir.prepare(runs_dir, run_id, '{"sim": {}}')
        except InvalidRun as refusal:
            assert str(refusal).startswith(f"invalid run id {repr(run_id)[:60]}")
            assert files_under(root) == set()
            return
        # Only 12 lowercase hex characters get here, and only into runs_dir.
        assert rundir.RUN_ID_PATTERN.fullmatch(run_id)
        assert paths.run_dir == runs_dir / run_id
        assert all(path.is_relative_to(runs_dir) for path in files_under(root / "a"))


# --- configuration files: random keys and values -------------------------------------------

# TOML's integers are 64-bit; tomllib takes larger ones (see the test below).
INT64 = st.integers(-(2**63), 2**63 - 1)
TOML_SCALARS = st.one_of(
    INT64,
    st.floats(),
    st.booleans(),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.sampled_from(["sqlite:///x.db", "postgresql://h/db", "detach", "terminate", "debug",
                     "auto", "log", "slurm", "local", "warn", "cancel", "", "\x00", "a b"]),
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=2),
    max_leaves=5,
)
CHOICES = st.sampled_from([
    "sqlite:///x.db", "postgresql://h/db", "runs", "detach", "terminate", "debug", "INFO", "auto",
    "file", "log", "local", "slurm", "warn", "cancel", "worker-1", "1:00:00",
])


def plausible(key: str) -> st.SearchStrategy[object]:
    """Values of the type the key's default has, valid or not."""
    default = getattr(config.Config, key, None)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int) or key == "max_cores":
        return INT64
    if isinstance(default, float):
        return st.one_of(st.floats(), INT64)
    if isinstance(default, tuple):
        return st.lists(st.one_of(CHOICES, st.text(max_size=5)), max_size=3)
    return st.one_of(CHOICES, st.text(max_size=8))


def documents() -> st.SearchStrategy[dict[str, object]]:
    """A TOML document's keys and values: mostly known keys, mostly of their type."""
    keys = st.lists(mostly(st.sampled_from(config.KEYS), st.text(max_size=10)),
                    unique=True, max_size=4)
    return keys.flatmap(lambda names: st.fixed_dictionaries(
        {name: mostly(plausible(name), TOML_VALUES) for name in names}))


def toml_text(value: object) -> str:
    """A value as TOML (inline), for the strategies above."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # inf, -inf, 1e+300 are TOML
    if isinstance(value, str):
        # JSON escapes are TOML's, but TOML wants DEL escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_text(k)} = {toml_text(v)}" for k, v in value.items()) + "}"


@fuzz(300)
@given(documents())
def test_a_configuration_file_resolves_or_is_refused_naming_the_key(
    document: dict[str, object],
) -> None:
    with folder() as root:
        path = root / "config.toml"
        path.write_text("".join(f"{toml_text(k)} = {toml_text(v)}\n" for k, v in document.items()),
                        encoding="utf-8")
        try:
            resolved = config.resolve(environ={}, config_file=path)
        except ConfigError as refusal:
            message = str(refusal)
            assert message.startswith(tuple(f"{key}: " for key in document)), message
            assert str(path) in message
            return
    assert set(document) <= set(config.KEYS)
    for key in document:
        assert resolved.sources[key] == str(path)


def test_an_integer_too_large_for_a_float_key_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"stop_grace_seconds = {10**400}\n")
    with pytest.raises(ConfigError, match=r"^stop_grace_seconds: "):
        config.resolve(environ={}, config_file=path)
