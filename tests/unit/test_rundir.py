"""rundir: run ids, config_json -> config.ini, the directory layout, argv and environment."""

from __future__ import annotations

import configparser
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fusion_runner.core import rundir
from fusion_runner.core.errors import FusionRunnerError, InvalidRun

RUN_ID = "abc123def456"

# The head of FUSION's minimal template, as the GUI stores it in config_json.
EXAMPLE_CONFIG = {
    "general_settings": {
        "erlang_start": 300,
        "erlang_stop": 500,
        "holding_time": 0.2,
        "thread_num": "s1",
        "mod_assumption_path": "data/json_input/example_mods/default_mod_formats.json",
        "request_distribution": {"25": 0.1, "50": 0.1, "100": 0.5, "200": 0.2, "400": 0.1},
        "thread_erlangs": False,
        "is_only_core_node": True,
        "spectrum_priority": None,
        "route_method": "k_shortest_path",
    },
    "snr_settings": {"requested_xt": {"QPSK": -26.19, "16-QAM": -36.69}, "theta": 0.0},
    "topology_settings": {"Network": "NSFNet", "cores_per_link": 3, "bw_per_slot": 12.5},
    "ml_settings": {"path_levels": [1, 2, "x"], "alpha_start": 0.000215},
}

EXAMPLE_INI = """\
[general_settings]
erlang_start = 300
erlang_stop = 500
holding_time = 0.2
thread_num = s1
mod_assumption_path = data/json_input/example_mods/default_mod_formats.json
request_distribution = {"25":0.1,"50":0.1,"100":0.5,"200":0.2,"400":0.1}
thread_erlangs = False
is_only_core_node = True
spectrum_priority = None
route_method = k_shortest_path

[snr_settings]
requested_xt = {"QPSK":-26.19,"16-QAM":-36.69}
theta = 0.0

[topology_settings]
Network = NSFNet
cores_per_link = 3
bw_per_slot = 12.5

[ml_settings]
path_levels = [1,2,"x"]
alpha_start = 0.000215

"""


def read_ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def as_dict(parser: configparser.ConfigParser) -> dict[str, dict[str, str]]:
    return {name: dict(parser[name]) for name in parser.sections()}


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_mode) for p in root.rglob("*"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- run ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["abc123def456", "000000000000", "ffffffffffff"])
def test_valid_run_ids_are_returned(run_id: str) -> None:
    assert rundir.validate_run_id(run_id) == run_id


@pytest.mark.parametrize(
    "run_id",
    [
        "../../etc/x",
        "../x",
        "ABC123DEF456",
        "abc123def45",
        "abc123def4567",
        "",
        "abc123def45g",
        "abc123def456\n",
        " abc123def456",
        "abc123/ef456",
        "abc123def45\u0661",
        "\uff41bc123def456",
        "abc123def45.",
    ],
)
def test_invalid_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(InvalidRun, match=r"^invalid run id .*must be 12 lowercase hex characters"):
        rundir.validate_run_id(run_id)


@pytest.mark.parametrize("run_id", [11, 123456789012, None, b"abc123def456", ["abc123def456"]])
def test_non_string_run_ids_are_refused(run_id: object) -> None:
    with pytest.raises(InvalidRun, match="invalid run id"):
        rundir.validate_run_id(run_id)


def test_the_invalid_run_id_message_quotes_the_id() -> None:
    with pytest.raises(InvalidRun) as caught:
        rundir.validate_run_id("../x")
    assert str(caught.value) == "invalid run id '../x': must be 12 lowercase hex characters"
    assert isinstance(caught.value, FusionRunnerError)


def test_a_huge_invalid_run_id_gives_a_short_message() -> None:
    with pytest.raises(InvalidRun) as caught:
        rundir.validate_run_id("x" * 100_000)
    assert len(str(caught.value)) < 200


@given(st.text(max_size=20))
def test_only_twelve_lowercase_hex_characters_pass(run_id: str) -> None:
    valid = len(run_id) == 12 and set(run_id) <= set("0123456789abcdef")
    try:
        assert rundir.validate_run_id(run_id) == run_id
        assert valid
    except InvalidRun:
        assert not valid


# --- config_json ----------------------------------------------------------------------------


def test_parse_returns_the_sections() -> None:
    assert rundir.parse_config_json(json.dumps(EXAMPLE_CONFIG)) == EXAMPLE_CONFIG
    assert rundir.parse_config_json("{}") == {}
    assert rundir.parse_config_json('{"s": {}}') == {"s": {}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", r"^config_json is not valid JSON: Expecting value: line 1 column 1 \(char 0\)$"),
        ('{"s": {"k": 1}', r"^config_json is not valid JSON: .*line 1 column 15"),
        ("{'s': {}}", r"^config_json is not valid JSON: .*line 1 column 2"),
        ('{"s": {"k": 1}} x', r"^config_json is not valid JSON: Extra data"),
        ("[" * 100_000, r"^config_json is not valid JSON: .*recursion"),
        ('{"s": {"k": ' + "9" * 5000 + "}}", r"^config_json is not valid JSON: .*digits"),
        ("[]", r"^config_json must be a JSON object of sections, not an array$"),
        ('"text"', r"^config_json must be a JSON object of sections, not a string$"),
        ("3", r"^config_json must be a JSON object of sections, not a number$"),
        ("null", r"^config_json must be a JSON object of sections, not null$"),
        ('{"x": 1}', r"^config_json: section 'x' is not an object but a number$"),
        ('{"x": [1]}', r"^config_json: section 'x' is not an object but an array$"),
        ('{"x": "v"}', r"^config_json: section 'x' is not an object but a string$"),
        ('{"x": null}', r"^config_json: section 'x' is not an object but null$"),
        ('{"x": true}', r"^config_json: section 'x' is not an object but a boolean$"),
        ('{"": {}}', r"^config_json: section name '' is empty$"),
        ('{"a\\nb": {}}', r"^config_json: section name 'a\\nb' contains a control character"),
        ('{"a[b": {}}', r"^config_json: section name 'a\[b' contains '\['$"),
        ('{"a]b": {}}', r"^config_json: section name 'a\]b' contains '\]'$"),
        ('{"a=b": {}}', r"^config_json: section name 'a=b' contains '='$"),
        ('{"a:b": {}}', r"^config_json: section name 'a:b' contains ':'$"),
        ('{"s": {"": 1}}', r"^config_json: key name '' in section 's' is empty$"),
        ('{"s": {"a\\nb": 1}}', r"^config_json: key name 'a\\nb' in section 's' contains a cont"),
        ('{"s": {"a\\rb": 1}}', r"^config_json: key name 'a\\rb' in section 's' contains a cont"),
        ('{"s": {"a[b": 1}}', r"^config_json: key name 'a\[b' in section 's' contains '\['$"),
        ('{"s": {"a]": 1}}', r"^config_json: key name 'a\]' in section 's' contains '\]'$"),
        ('{"s": {"a=b": 1}}', r"^config_json: key name 'a=b' in section 's' contains '='$"),
        ('{"s": {"a:b": 1}}', r"^config_json: key name 'a:b' in section 's' contains ':'$"),
        ('{"s": {" k": 1}}', r"^config_json: key name ' k' in section 's' has leading or trail"),
        ('{"s": {"k ": 1}}', r"^config_json: key name 'k ' in section 's' has leading or trail"),
        ('{"s": {"#k": 1}}', r"^config_json: key name '#k' in section 's' starts with '#'"),
        ('{"s": {";k": 1}}', r"^config_json: key name ';k' in section 's' starts with ';'"),
        (
            '{"s": {"k": "a\\nb"}}',
            r"^config_json: value of s.k contains a control character \('\\n'\)",
        ),
        (
            '{"s": {"k": "a\\rb"}}',
            r"^config_json: value of s.k contains a control character \('\\r'\)",
        ),
        (
            '{"s": {"k": "a\\tb"}}',
            r"^config_json: value of s.k contains a control character \('\\t'\)",
        ),
        ('{"s": {"k": "\\u0000"}}', r"^config_json: value of s.k contains a control character"),
        ('{"s": {"k": "\\u001f"}}', r"^config_json: value of s.k contains a control character"),
        ('{"s": {"k": "a\\u007fb"}}', r"^config_json: value of s.k contains a control character"),
        ('{"s": {"k": ["ok", "a\\nb"]}}', r"^config_json: value of s.k contains a control char"),
        ('{"s": {"k": {"x": "a\\nb"}}}', r"^config_json: value of s.k contains a control char"),
        ('{"s": {"k": {"a\\nb": 1}}}', r"^config_json: value of s.k contains a control char"),
        ('{"s": {"k": [[{"y": ["\\n"]}]]}}', r"^config_json: value of s.k contains a control"),
        (
            '{"s": {"k": "a\\u0085b"}}',
            r"^config_json: value of s.k contains a control character \('\\x85'\)$",
        ),
        ('{"s": {"k": "\\u0080"}}', r"^config_json: value of s.k contains a control character"),
        ('{"s": {"k": "\\u009f"}}', r"^config_json: value of s.k contains a control character"),
        ('{"s": {"k": ["\\u0085"]}}', r"^config_json: value of s.k contains a control character"),
        ('{"s": {"k": {"\\u0085": 1}}}', r"^config_json: value of s.k contains a control char"),
        (
            '{"s": {"k": "a\\u2028b"}}',
            r"^config_json: value of s.k contains a line separator \('\\u2028'\)$",
        ),
        (
            '{"s": {"k": "a\\u2029b"}}',
            r"^config_json: value of s.k contains a line separator \('\\u2029'\)$",
        ),
        (
            '{"s": {"k": [{"x": "\\u2028"}]}}',
            r"^config_json: value of s.k contains a line separator",
        ),
        ('{"a\\u0085b": {}}', r"^config_json: section name 'a\\x85b' contains a control character"),
        ('{"a\\u2029b": {}}', r"^config_json: section name 'a\\u2029b' contains a line separator"),
        (
            '{"s": {"a\\u009fb": 1}}',
            r"^config_json: key name 'a\\x9fb' in section 's' contains a con",
        ),
        (
            '{"s": {"a\\u2028b": 1}}',
            r"^config_json: key name 'a\\u2028b' in section 's' contains a li",
        ),
        ('{"s": {"k": "\\ud800"}}', r"^config_json: value of s.k contains an unpaired surrogate"),
        ('{"s\\ud800": {}}', r"^config_json: section name .* contains an unpaired surrogate"),
        ('{"s": {"k": ' + "[" * 70 + "]" * 70 + "}}", r"^config_json: value of s.k is nested more"),
    ],
)
def test_invalid_config_json_is_refused_with_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(InvalidRun, match=expected):
        rundir.parse_config_json(text)


@pytest.mark.parametrize("text", [None, b'{"s": {}}', {"s": {}}, 3])
def test_config_json_that_is_not_text_is_refused(text: object) -> None:
    with pytest.raises(InvalidRun, match=r"^config_json is not text"):
        rundir.parse_config_json(text)


def test_the_first_bad_value_is_named_by_section_and_key() -> None:
    text = json.dumps({"good": {"a": "x"}, "bad": {"fine": 1, "broken": ["a\u0007"]}})
    with pytest.raises(InvalidRun, match=r"^config_json: value of bad\.broken "):
        rundir.parse_config_json(text)


def test_messages_about_long_names_stay_short() -> None:
    configs: list[dict[str, object]] = [
        {"s" * 5000: []},
        {"s": {"k" * 5000: "\n"}},
        {"s": {"k=" * 5000: 1}},
    ]
    for config in configs:
        with pytest.raises(InvalidRun) as caught:
            rundir.parse_config_json(json.dumps(config))
        assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "value",
    [
        "",
        "inner  spaces",
        "a=b:c [x] ;# %(x)s {json}",
        "ünïcødé \u3000 \xa0 😀",
        [" padded ", "\xa0", " "],
        {" k ": "\u3000v\u3000"},
        1e400,
        -0.0,
        10**30,
        [],
        {},
        {"k": [None, True, 1.5]},
    ],
)
def test_printable_values_of_any_json_type_are_accepted(value: object) -> None:
    assert rundir.parse_config_json(json.dumps({"s": {"k": value}})) == {"s": {"k": value}}


def test_values_nested_to_the_depth_limit_are_accepted() -> None:
    deep = "[" * rundir.MAX_VALUE_DEPTH + "]" * rundir.MAX_VALUE_DEPTH
    assert rundir.parse_config_json('{"s": {"k": ' + deep + "}}")["s"]["k"]


# --- config.ini -----------------------------------------------------------------------------


def test_the_spec_example_renders_as_fusion_writes_it() -> None:
    assert rundir.render_ini(EXAMPLE_CONFIG) == EXAMPLE_INI


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("s1", "s1"),
        ("", ""),
        (True, "True"),
        (False, "False"),
        (None, "None"),
        (300, "300"),
        (0.2, "0.2"),
        (300.0, "300.0"),
        (1e-07, "1e-07"),
        (-26.19, "-26.19"),
        (10**20, str(10**20)),
        ([1, "a", None], '[1,"a",null]'),
        ({"a": {"b": [True]}}, '{"a":{"b":[true]}}'),
        ({"é": "ü"}, '{"\\u00e9":"\\u00fc"}'),
        ("%(x)s", "%(x)s"),
        ("{a}", "{a}"),
    ],
)
def test_values_are_rendered_as_fusion_writes_them(value: object, text: str) -> None:
    rendered = rundir.render_ini({"s": {"k": value}})
    assert rendered == f"[s]\nk = {text}\n\n"
    assert read_ini(rendered)["s"]["k"] == text


def test_key_case_and_order_are_kept() -> None:
    rendered = rundir.render_ini({"S": {"Zeta": 1, "alpha": 2, "ALPHA": 3}})
    assert rendered == "[S]\nZeta = 1\nalpha = 2\nALPHA = 3\n\n"


def test_an_empty_config_renders_empty() -> None:
    assert rundir.render_ini({}) == ""


# Each is whitespace to str.strip, which configparser applies to a value it reads.
WHITESPACE = " \xa0\u1680\u2000\u2003\u200a\u202f\u205f\u3000"
PADDED = ["  padded  ", " x", "x ", "x\xa0", "\u3000x", "\u2003", "   ", "\xa0 \u3000"]


@pytest.mark.parametrize("value", PADDED)
def test_a_string_value_with_whitespace_ends_is_refused_as_configparser_strips_them(
    value: str,
) -> None:
    assert read_ini(rundir.render_ini({"s": {"k": value}}))["s"]["k"] == value.strip() != value
    with pytest.raises(InvalidRun) as caught:
        rundir.parse_config_json(json.dumps({"sim": {"name": value}}))
    assert str(caught.value) == (
        "config_json: value of sim.name has leading or trailing whitespace,"
        " which config.ini cannot keep"
    )


@pytest.mark.parametrize("value", PADDED)
def test_strings_with_whitespace_ends_inside_arrays_and_objects_round_trip(value: str) -> None:
    config = {"s": {"list": [value], "object": {value: value}}}
    parsed = rundir.parse_config_json(json.dumps(config))
    read_back = read_ini(rundir.render_ini(parsed))["s"]
    assert {key: json.loads(text) for key, text in read_back.items()} == config["s"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a\u2028 ", "line separator"), (" \x85", "control character"), ("\t", "control char")],
)
def test_a_forbidden_character_is_named_before_whitespace_ends(value: str, expected: str) -> None:
    with pytest.raises(InvalidRun, match=f"^config_json: value of s.k contains a {expected}"):
        rundir.parse_config_json(json.dumps({"s": {"k": value}}))


@given(st.text(st.sampled_from([*"ab é😀=", *WHITESPACE]), max_size=8))
def test_a_string_value_is_accepted_exactly_when_config_ini_keeps_it(value: str) -> None:
    config = {"s": {"k": value}}
    kept = as_dict(read_ini(rundir.render_ini(config))) == config
    try:
        rundir.parse_config_json(json.dumps(config))
    except InvalidRun as error:
        assert not kept
        assert "has leading or trailing whitespace" in str(error)
    else:
        assert kept


# Mostly harmless characters, some that INI or the spec cannot take, some unicode edge cases.
TRICKY = st.sampled_from(
    list("abcXYZ0_-.é😀%{}" * 4)
    + list(" #;\u3000\xa0\u2003[]=:")
    + list("\n\r\t\x0b\x7f\x85\x9f\u2028\u2029")
)
NAME = st.text(TRICKY, min_size=1, max_size=6).filter(lambda name: name != "DEFAULT")
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(TRICKY, max_size=10)
    | st.text(max_size=3)
)
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(TRICKY, max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400)  # most examples are (rightly) refused: keep enough accepted ones
@given(NAME, NAME, JSON_VALUE, NAME)
def test_whatever_parse_accepts_configparser_reads_back_the_same(
    section: str, key: str, value: object, other: str
) -> None:
    config = {section: {key: value, "k": "v"}, other: {}}
    try:
        parsed = rundir.parse_config_json(json.dumps(config))
    except InvalidRun:
        return
    assert parsed == config
    read_back = as_dict(read_ini(rundir.render_ini(parsed)))
    assert read_back == {
        section: {key: _expected_text(value) for key, value in options.items()}
        for section, options in config.items()
    }


def _expected_text(value: object) -> str:
    if isinstance(value, str):
        return value  # exactly: parse refuses what INI would strip or split
    if isinstance(value, list | dict):
        text = json.dumps(value, separators=(",", ":"))
        assert json.loads(text) == value
        return text
    return str(value)  # True, None, 300, 0.2


PRINTABLE = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), max_size=20)
PLAIN_NAME = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="[]=:#;"),
    min_size=1,
    max_size=12,
).filter(lambda name: name != "DEFAULT" and name == name.strip())


@given(st.dictionaries(PLAIN_NAME, st.dictionaries(PLAIN_NAME, PRINTABLE, max_size=5), max_size=4))
def test_printable_names_and_strings_round_trip_exactly(config: dict[str, dict[str, str]]) -> None:
    # The generator above only makes valid configs: parse must accept every one.
    parsed = rundir.parse_config_json(json.dumps(config))
    assert as_dict(read_ini(rundir.render_ini(parsed))) == config


# --- paths and prepare ----------------------------------------------------------------------


def test_paths_lay_out_the_run_directory(tmp_path: Path) -> None:
    paths = rundir.RunPaths.under(tmp_path / "runs", RUN_ID)
    run_dir = tmp_path.resolve() / "runs" / RUN_ID
    assert paths == rundir.RunPaths(
        run_id=RUN_ID,
        run_dir=run_dir,
        config_file=run_dir / "config.ini",
        log_file=run_dir / "logs" / "sim.log",
        progress_file=run_dir / "progress.jsonl",
        output_dir=run_dir / "output",
        exit_record=run_dir / "exit.json",
        spawn_marker=run_dir / ".spawned",
    )


def test_paths_are_absolute_for_a_relative_runs_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = rundir.RunPaths.under(Path("runs"), RUN_ID)
    assert paths.run_dir == tmp_path.resolve() / "runs" / RUN_ID
    assert all(path.is_absolute() for path in (paths.config_file, paths.exit_record))


def test_paths_refuse_an_invalid_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidRun, match="invalid run id"):
        rundir.RunPaths.under(tmp_path, "../../etc/x")


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o000, 0o077, 0o022, 0o027])
def test_prepare_makes_the_directories_0750_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    os.umask(mask)
    paths = rundir.prepare(tmp_path / "runs" / "nested", RUN_ID, json.dumps(EXAMPLE_CONFIG))
    os.umask(0o022)
    assert paths == rundir.RunPaths.under(tmp_path / "runs" / "nested", RUN_ID)
    for directory in (paths.run_dir, paths.log_file.parent, paths.output_dir):
        assert directory.is_dir()
        assert mode(directory) == 0o750, directory
    assert paths.config_file.read_text(encoding="utf-8") == EXAMPLE_INI
    assert sorted(os.listdir(paths.run_dir)) == ["config.ini", "logs", "output"]


def test_prepare_fixes_the_mode_of_an_existing_run_directory(tmp_path: Path) -> None:
    (tmp_path / RUN_ID / "logs").mkdir(parents=True, mode=0o700)
    (tmp_path / RUN_ID).chmod(0o777)
    paths = rundir.prepare(tmp_path, RUN_ID, "{}")
    assert mode(paths.run_dir) == 0o750
    assert mode(paths.log_file.parent) == 0o750


def test_prepare_keeps_an_existing_config_ini(tmp_path: Path) -> None:
    first = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 1}}')
    first.config_file.write_text("[kept]\n")
    (first.output_dir / "artefact").write_text("x")
    again = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 2}}')
    assert again.config_file.read_text() == "[kept]\n"
    assert (again.output_dir / "artefact").read_text() == "x"


def test_prepare_leaves_no_temporary_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        rundir.prepare(tmp_path, RUN_ID, "{}")
    assert sorted(os.listdir(tmp_path / RUN_ID)) == ["logs", "output"]


@pytest.mark.parametrize(
    ("run_id", "config_json"),
    [
        ("../../etc/x", "{}"),
        ("ABC123DEF456", "{}"),
        ("abc123def45", "{}"),
        (RUN_ID, "not json"),
        (RUN_ID, '{"s": {"k": "a\\nb"}}'),
        (RUN_ID, '{"s": 1}'),
    ],
)
def test_prepare_writes_nothing_for_a_bad_row(
    tmp_path: Path, run_id: str, config_json: str
) -> None:
    (tmp_path / "existing").mkdir()
    before = listing(tmp_path)
    for runs_dir in (tmp_path, tmp_path / "runs"):
        with pytest.raises(InvalidRun):
            rundir.prepare(runs_dir, run_id, config_json)
    assert listing(tmp_path) == before


def test_prepare_refuses_a_symlinked_run_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / RUN_ID).symlink_to(outside, target_is_directory=True)
    before = listing(tmp_path)
    with pytest.raises(InvalidRun, match=f"{RUN_ID} is a symlink or not a directory"):
        rundir.prepare(tmp_path / "runs", RUN_ID, "{}")
    assert listing(tmp_path) == before
    assert mode(outside) == 0o700


@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_prepare_refuses_a_run_directory_that_is_not_one(tmp_path: Path, kind: str) -> None:
    target = tmp_path / RUN_ID
    if kind == "file":
        target.write_text("x")
    else:
        target.symlink_to(tmp_path / "missing")
    before = listing(tmp_path)
    with pytest.raises(InvalidRun, match="is a symlink or not a directory"):
        rundir.prepare(tmp_path, RUN_ID, "{}")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name", ["logs", "output"])
def test_prepare_refuses_a_symlinked_subdirectory(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (tmp_path / "runs" / RUN_ID).mkdir(parents=True)
    (tmp_path / "runs" / RUN_ID / name).symlink_to(outside)
    with pytest.raises(InvalidRun, match=f"{name} is a symlink or not a directory"):
        rundir.prepare(tmp_path / "runs", RUN_ID, "{}")
    assert mode(outside) == 0o700
    assert not (tmp_path / "runs" / RUN_ID / "config.ini").exists()


def test_prepare_does_not_write_through_a_symlinked_config_ini(tmp_path: Path) -> None:
    outside = tmp_path / "outside.ini"
    outside.write_text("[theirs]\n")
    (tmp_path / "runs" / RUN_ID).mkdir(parents=True)
    (tmp_path / "runs" / RUN_ID / "config.ini").symlink_to(outside)
    rundir.prepare(tmp_path / "runs", RUN_ID, '{"s": {"k": 1}}')
    assert outside.read_text() == "[theirs]\n"


# --- command and environment ----------------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path) -> rundir.RunPaths:
    return rundir.RunPaths.under(tmp_path, RUN_ID)


def test_the_default_template_expands(paths: rundir.RunPaths) -> None:
    template = [
        "{python}",
        "-m",
        "fusion_runner.refsim",
        "--config",
        "{config}",
        "--progress-file",
        "{progress}",
        "--output-dir",
        "{output_dir}",
    ]
    assert rundir.expand_command(template, paths, "/usr/bin/python3") == [
        "/usr/bin/python3",
        "-m",
        "fusion_runner.refsim",
        "--config",
        str(paths.config_file),
        "--progress-file",
        str(paths.progress_file),
        "--output-dir",
        str(paths.output_dir),
    ]


def test_the_fusion_template_expands(paths: rundir.RunPaths) -> None:
    template = [
        "{python}",
        "-m",
        "fusion.cli.run_sim",
        "run_sim",
        "--config_path",
        "{config}",
        "--run_id",
        "{run_id}",
        "--progress_file",
        "{progress}",
    ]
    assert rundir.expand_command(template, paths, "py") == [
        "py",
        "-m",
        "fusion.cli.run_sim",
        "run_sim",
        "--config_path",
        str(paths.config_file),
        "--run_id",
        RUN_ID,
        "--progress_file",
        str(paths.progress_file),
    ]


def test_placeholders_expand_inside_tokens_and_other_braces_survive(
    paths: rundir.RunPaths,
) -> None:
    template = [
        "--dir={run_dir}/x",
        "{log}:{log}",
        '{"a": {"b": 1}}',
        "{unknown}",
        "{{run_id}}",
        "{ run_id }",
        "{}",
        "{0}",
        "%(run_id)s",
        "{python",
    ]
    assert rundir.expand_command(template, paths, "py") == [
        f"--dir={paths.run_dir}/x",
        f"{paths.log_file}:{paths.log_file}",
        '{"a": {"b": 1}}',
        "{unknown}",
        "{" + RUN_ID + "}",
        "{ run_id }",
        "{}",
        "{0}",
        "%(run_id)s",
        "{python",
    ]


def test_expanded_values_are_not_expanded_again(tmp_path: Path) -> None:
    paths = rundir.RunPaths.under(tmp_path / "{run_id}", RUN_ID)
    expanded = rundir.expand_command(["{run_dir}", "{python}"], paths, "{config}")
    assert expanded == [str(tmp_path.resolve() / "{run_id}" / RUN_ID), "{config}"]


def test_a_template_is_not_mutated(paths: rundir.RunPaths) -> None:
    template = ["{python}", "{run_id}"]
    rundir.expand_command(template, paths, "py")
    assert template == ["{python}", "{run_id}"]


def test_a_shell_line_is_not_a_template(paths: rundir.RunPaths) -> None:
    with pytest.raises(TypeError, match="list of arguments"):
        rundir.expand_command("{python} -m x", paths, "py")


def test_environment_adds_the_run_variables(paths: rundir.RunPaths) -> None:
    base = {"PATH": "/bin", "FUSION_RUN_ID": "stale"}
    env = rundir.environment(paths, base)
    assert env == {
        "PATH": "/bin",
        "FUSION_RUN_ID": RUN_ID,
        "FUSION_RUN_DIR": str(paths.run_dir),
        "FUSION_CONFIG_FILE": str(paths.config_file),
        "FUSION_PROGRESS_FILE": str(paths.progress_file),
        "FUSION_OUTPUT_DIR": str(paths.output_dir),
    }
    assert base == {"PATH": "/bin", "FUSION_RUN_ID": "stale"}
    assert all(Path(env[name]).is_absolute() for name in env if name.endswith(("_DIR", "_FILE")))


@given(st.lists(st.text(max_size=30), max_size=6))
def test_tokens_without_placeholders_pass_unchanged(template: list[str]) -> None:
    placeholders = (
        "{python}",
        "{run_id}",
        "{run_dir}",
        "{config}",
        "{progress}",
        "{output_dir}",
        "{log}",
    )
    assume(not any(p in token for token in template for p in placeholders))
    paths = rundir.RunPaths.under(Path("/runs"), RUN_ID)
    assert rundir.expand_command(template, paths, "py") == template


# --- templates with overrides (SPEC §3) -----------------------------------------------------

TEMPLATE_INI = """\
[general_settings]
erlang_start = 300
max_iters = 2
route_method = k_shortest_path
request_distribution = {"25": 0.10, "100": 0.90}
Mixed_Case = kept
percent = 50%

[topology_settings]
network = NSFNet

"""


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "minimal.ini").write_text(TEMPLATE_INI)
    return folder


def prepare_from(
    tmp_path: Path, templates_dir: Path, template: str, overrides: object
) -> rundir.RunPaths:
    return rundir.prepare(
        tmp_path / "runs", RUN_ID, json.dumps(overrides),
        template=template, templates_dir=templates_dir,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["minimal", "minimal.ini"])
def test_a_template_named_by_stem_or_file_name_is_the_config_as_is(
    tmp_path: Path, templates_dir: Path, name: str
) -> None:
    paths = prepare_from(tmp_path, templates_dir, name, {})
    assert paths.config_file.read_text(encoding="utf-8") == TEMPLATE_INI
    assert mode(paths.config_file) == rundir.CONFIG_MODE


def test_overrides_replace_keys_and_add_keys_and_sections(
    tmp_path: Path, templates_dir: Path
) -> None:
    overrides = {
        "general_settings": {"max_iters": 5, "seed": 7, "Mixed_Case": False},
        "ml_settings": {"path_levels": [1, 2]},
    }
    paths = prepare_from(tmp_path, templates_dir, "minimal", overrides)
    written = as_dict(read_ini(paths.config_file.read_text(encoding="utf-8")))
    assert written == {
        "general_settings": {
            "erlang_start": "300", "max_iters": "5", "route_method": "k_shortest_path",
            "request_distribution": '{"25": 0.10, "100": 0.90}', "Mixed_Case": "False",
            "percent": "50%", "seed": "7",
        },
        "topology_settings": {"network": "NSFNet"},
        "ml_settings": {"path_levels": "[1,2]"},
    }  # fmt: skip


def test_overrides_are_validated_as_config_json_is(tmp_path: Path, templates_dir: Path) -> None:
    with pytest.raises(InvalidRun, match=r"config_json: value of s\.k contains a control char"):
        prepare_from(tmp_path, templates_dir, "minimal", {"s": {"k": "a\nb"}})
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["missing", "missing.ini", "MINIMAL", "minimal.INI", ""])
def test_a_missing_template_fails_naming_it_and_the_folder(
    tmp_path: Path, templates_dir: Path, name: str
) -> None:
    with pytest.raises(InvalidRun) as caught:
        prepare_from(tmp_path, templates_dir, name, {})
    assert repr(name) in str(caught.value)
    assert str(templates_dir) in str(caught.value)
    assert not (tmp_path / "runs").exists()  # nothing written for a run that cannot start


@pytest.mark.parametrize(
    "name", ["../templates/minimal", "sub/minimal", "/etc/passwd", "..", "a..b", "x\\y", "m\x00"]
)
def test_a_template_name_that_could_leave_the_folder_is_refused(
    tmp_path: Path, templates_dir: Path, name: str
) -> None:
    (templates_dir / "sub").mkdir()
    (templates_dir / "sub" / "minimal.ini").write_text(TEMPLATE_INI)
    with pytest.raises(InvalidRun, match="is not a template name: it contains"):
        prepare_from(tmp_path, templates_dir, name, {})
    assert not (tmp_path / "runs").exists()


def test_a_folder_is_not_a_template(tmp_path: Path, templates_dir: Path) -> None:
    (templates_dir / "folder.ini").mkdir()
    with pytest.raises(InvalidRun, match="template 'folder' not found"):
        prepare_from(tmp_path, templates_dir, "folder", {})


def test_a_malformed_template_fails_naming_the_file(tmp_path: Path, templates_dir: Path) -> None:
    (templates_dir / "broken.ini").write_text("no section header\n")
    with pytest.raises(InvalidRun, match=r"broken\.ini is not a valid INI file"):
        prepare_from(tmp_path, templates_dir, "broken", {})


def test_an_existing_config_ini_is_kept_and_its_template_not_needed(
    tmp_path: Path, templates_dir: Path
) -> None:
    run_dir = tmp_path / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    (run_dir / "config.ini").write_text("[the_guis_own]\nk = v\n")
    for name in ("minimal", "gone-since"):
        paths = prepare_from(tmp_path, templates_dir, name, {"s": {"k": 2}})
        assert paths.config_file.read_text() == "[the_guis_own]\nk = v\n"
    assert sorted(os.listdir(run_dir)) == ["config.ini", "logs", "output"]


def test_without_templates_dir_the_template_column_is_only_a_label(tmp_path: Path) -> None:
    paths = rundir.prepare(tmp_path, RUN_ID, '{"s": {"k": 1}}', template="../nowhere")
    assert paths.config_file.read_text() == "[s]\nk = 1\n\n"
