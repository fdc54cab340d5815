"""runconfig: config_json validated and rendered as config.ini."""

from __future__ import annotations

import configparser
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_runner.core import runconfig
from fusion_runner.core.errors import InvalidRun

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


# --- config_json ----------------------------------------------------------------------------


def test_parse_returns_the_sections() -> None:
    assert runconfig.parse_config_json(json.dumps(EXAMPLE_CONFIG)) == EXAMPLE_CONFIG
    assert runconfig.parse_config_json("{}") == {}
    assert runconfig.parse_config_json('{"s": {}}') == {"s": {}}


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
        runconfig.parse_config_json(text)


@pytest.mark.parametrize("text", [None, b'{"s": {}}', {"s": {}}, 3])
def test_config_json_that_is_not_text_is_refused(text: object) -> None:
    with pytest.raises(InvalidRun, match=r"^config_json is not text"):
        runconfig.parse_config_json(text)


def test_the_first_bad_value_is_named_by_section_and_key() -> None:
    text = json.dumps({"good": {"a": "x"}, "bad": {"fine": 1, "broken": ["a\u0007"]}})
    with pytest.raises(InvalidRun, match=r"^config_json: value of bad\.broken "):
        runconfig.parse_config_json(text)


def test_messages_about_long_names_stay_short() -> None:
    configs: list[dict[str, object]] = [
        {"s" * 5000: []},
        {"s": {"k" * 5000: "\n"}},
        {"s": {"k=" * 5000: 1}},
    ]
    for config in configs:
        with pytest.raises(InvalidRun) as caught:
            runconfig.parse_config_json(json.dumps(config))
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
    assert runconfig.parse_config_json(json.dumps({"s": {"k": value}})) == {"s": {"k": value}}


def test_values_nested_to_the_depth_limit_are_accepted() -> None:
    deep = "[" * runconfig.MAX_VALUE_DEPTH + "]" * runconfig.MAX_VALUE_DEPTH
    assert runconfig.parse_config_json('{"s": {"k": ' + deep + "}}")["s"]["k"]


# --- config.ini -----------------------------------------------------------------------------


def test_the_spec_example_renders_as_fusion_writes_it() -> None:
    assert runconfig.render_ini(EXAMPLE_CONFIG) == EXAMPLE_INI


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
    rendered = runconfig.render_ini({"s": {"k": value}})
    assert rendered == f"[s]\nk = {text}\n\n"
    assert read_ini(rendered)["s"]["k"] == text


def test_key_case_and_order_are_kept() -> None:
    rendered = runconfig.render_ini({"S": {"Zeta": 1, "alpha": 2, "ALPHA": 3}})
    assert rendered == "[S]\nZeta = 1\nalpha = 2\nALPHA = 3\n\n"


def test_an_empty_config_renders_empty() -> None:
    assert runconfig.render_ini({}) == ""


# Each is whitespace to str.strip, which configparser applies to a value it reads.
WHITESPACE = " \xa0\u1680\u2000\u2003\u200a\u202f\u205f\u3000"
PADDED = ["  padded  ", " x", "x ", "x\xa0", "\u3000x", "\u2003", "   ", "\xa0 \u3000"]


@pytest.mark.parametrize("value", PADDED)
def test_a_string_value_with_whitespace_ends_is_refused_as_configparser_strips_them(
    value: str,
) -> None:
    assert read_ini(runconfig.render_ini({"s": {"k": value}}))["s"]["k"] == value.strip() != value
    with pytest.raises(InvalidRun) as caught:
        runconfig.parse_config_json(json.dumps({"sim": {"name": value}}))
    assert str(caught.value) == (
        "config_json: value of sim.name has leading or trailing whitespace,"
        " which config.ini cannot keep"
    )


@pytest.mark.parametrize("value", PADDED)
def test_strings_with_whitespace_ends_inside_arrays_and_objects_round_trip(value: str) -> None:
    config = {"s": {"list": [value], "object": {value: value}}}
    parsed = runconfig.parse_config_json(json.dumps(config))
    read_back = read_ini(runconfig.render_ini(parsed))["s"]
    assert {key: json.loads(text) for key, text in read_back.items()} == config["s"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a\u2028 ", "line separator"), (" \x85", "control character"), ("\t", "control char")],
)
def test_a_forbidden_character_is_named_before_whitespace_ends(value: str, expected: str) -> None:
    with pytest.raises(InvalidRun, match=f"^config_json: value of s.k contains a {expected}"):
        runconfig.parse_config_json(json.dumps({"s": {"k": value}}))


@given(st.text(st.sampled_from([*"ab é😀=", *WHITESPACE]), max_size=8))
def test_a_string_value_is_accepted_exactly_when_config_ini_keeps_it(value: str) -> None:
    config = {"s": {"k": value}}
    kept = as_dict(read_ini(runconfig.render_ini(config))) == config
    try:
        runconfig.parse_config_json(json.dumps(config))
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
        parsed = runconfig.parse_config_json(json.dumps(config))
    except InvalidRun:
        return
    assert parsed == config
    read_back = as_dict(read_ini(runconfig.render_ini(parsed)))
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
    parsed = runconfig.parse_config_json(json.dumps(config))
    assert as_dict(read_ini(runconfig.render_ini(parsed))) == config
