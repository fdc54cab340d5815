"""A run's config_json: validated, and rendered as the config.ini the simulation reads (SPEC §3).

Pure: no I/O. `parse_config_json` refuses, with InvalidRun saying why, what
config.ini could not keep (control characters, INI syntax in names, whitespace
ends configparser would strip); `render_ini` writes the sections as FUSION's
INI files are written.
"""

from __future__ import annotations

import configparser
import io
import json
import re
from collections.abc import Mapping

from fusion_runner.core import inifile
from fusion_runner.core.errors import InvalidRun

MAX_VALUE_DEPTH = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
# Not control characters, but str.splitlines, editors and log viewers end a line at them.
_LINE_SEPARATOR = re.compile(r"[\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INI_SYNTAX = re.compile(r"[\[\]=:]")
_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def parse_config_json(text: object) -> dict[str, dict[str, object]]:
    """The sections of a run's config_json, or InvalidRun saying what is wrong with it."""
    if not isinstance(text, str):
        raise InvalidRun(f"config_json is not text but {type(text).__name__}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, int digit limit, depth
        raise InvalidRun(f"config_json is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidRun(f"config_json must be a JSON object of sections, not {_json_type(data)}")
    for section, options in data.items():
        _check_section(section, options)
    return data


def _check_section(section: str, options: object) -> None:
    if problem := _name_problem(section, is_key=False):
        raise InvalidRun(f"config_json: section name {_quote(section)} {problem}")
    if section == configparser.DEFAULTSECT:
        # Written as [DEFAULT], its keys would be read back in every other section.
        raise InvalidRun(
            f"config_json: section name {_quote(section)} is configparser's default section,"
            " whose keys every section of config.ini would inherit"
        )
    if not isinstance(options, dict):
        raise InvalidRun(
            f"config_json: section {_quote(section)} is not an object but {_json_type(options)}"
        )
    for key, value in options.items():
        if problem := _name_problem(key, is_key=True):
            raise InvalidRun(
                f"config_json: key name {_quote(key)} in section {_quote(section)} {problem}"
            )
        where = _shorten(f"{section}.{key}")
        _check_value(where, value)
        _check_ends(where, value)


def _name_problem(name: str, *, is_key: bool) -> str | None:
    if not name:
        return "is empty"
    if problem := _text_problem(name):
        return problem
    if found := _INI_SYNTAX.search(name):
        return f"contains {found.group()!r}"
    # configparser strips a key, reads an indented line as a continuation of the
    # previous value and a line starting with # or ; as a comment.
    if is_key and name != name.strip():
        return "has leading or trailing whitespace"
    if is_key and name[0] in "#;":
        return f"starts with {name[0]!r}, which INI reads as a comment"
    return None


def _check_value(where: str, value: object) -> None:
    """Every string in value, object keys included, at any depth (iteratively: no recursion)."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_VALUE_DEPTH:
            raise InvalidRun(
                f"config_json: value of {where} is nested more than {MAX_VALUE_DEPTH} levels deep"
            )
        texts: list[object] = [item]
        if isinstance(item, list):
            pending.extend((element, depth + 1) for element in item)
        elif isinstance(item, dict):
            texts = list(item)
            pending.extend((element, depth + 1) for element in item.values())
        for text in texts:
            if isinstance(text, str) and (problem := _text_problem(text)):
                raise InvalidRun(f"config_json: value of {where} {problem}")


def _check_ends(where: str, value: object) -> None:
    # configparser strips a value's ends (str.strip: spaces, tabs, no-break spaces, U+3000 ...)
    # when the simulation reads it back. Only a top-level string is written bare: strings in
    # arrays and objects are quoted JSON, and "" reads back as "".
    if isinstance(value, str) and value != value.strip():
        raise InvalidRun(
            f"config_json: value of {where} has leading or trailing whitespace,"
            " which config.ini cannot keep"
        )


def _text_problem(text: str) -> str | None:
    if found := _CONTROL.search(text):
        return f"contains a control character ({found.group()!r})"
    if found := _LINE_SEPARATOR.search(text):
        return f"contains a line separator ({found.group()!r})"
    if found := _SURROGATE.search(text):
        return f"contains an unpaired surrogate ({found.group()!r})"
    return None


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _quote(value: object) -> str:
    return _shorten(repr(value))


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_ini(config: Mapping[str, Mapping[str, object]]) -> str:
    parser = inifile.KeyCaseParser()
    parser.read_dict(
        {
            section: {key: _ini_value(value) for key, value in options.items()}
            for section, options in config.items()
        }
    )
    text = io.StringIO()
    parser.write(text)
    return text.getvalue()


def _ini_value(value: object) -> str:
    """One config value as FUSION's INI files write it."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))
