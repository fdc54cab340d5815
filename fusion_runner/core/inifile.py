"""INI files <-> the `config_json` object of the runs table."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

from fusion_runner.core.errors import InvalidRun


class KeyCaseParser(configparser.ConfigParser):
    """configparser as FUSION reads its INI files: key case kept, no `%` interpolation.

    The one parser for both directions: reading INI files (submit, templates) and
    writing config.ini (`runconfig.render_ini`).
    """

    def __init__(self) -> None:
        super().__init__(interpolation=None)

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def read_ini(path: Path) -> dict[str, dict[str, object]]:
    """An INI file as `{section: {key: value}}`; InvalidRun names the file if it is bad."""
    parser = KeyCaseParser()
    try:
        with open(path, encoding="utf-8") as ini:
            parser.read_file(ini)
    except OSError as error:
        raise InvalidRun(f"cannot read {path}: {error.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as error:
        raise InvalidRun(f"{path} is not a valid INI file: {_one_line(str(error))}") from None
    return {
        section: {key: ini_value(value) for key, value in parser.items(section, raw=True)}
        for section in parser.sections()
    }


def ini_value(text: str) -> object:
    """The JSON value for an INI string, typed only where it renders back identically."""
    constants: dict[str, object] = {"True": True, "False": False, "None": None}
    if text in constants:
        return constants[text]
    for number_type in (int, float):
        try:
            number = number_type(text)
        except ValueError:
            continue
        if str(number) == text:
            return number
    return text


def to_config_json(config: dict[str, dict[str, object]]) -> str:
    return json.dumps(config)


def _one_line(text: str) -> str:
    return " ".join(text.split())
