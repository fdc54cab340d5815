"""A run's configuration from a template in `templates_dir` and its overrides (SPEC §3).

FUSION's GUI stores `template` as a stem (`minimal`) and `config_json` as
overrides of that template (normally `{}`). With `templates_dir` set, the
daemon builds config.ini from both; the GUI then needs to write no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fusion_runner.core import inifile
from fusion_runner.core.errors import InvalidRun

SUFFIX = ".ini"
# Names that could leave templates_dir (or mean nothing on another OS's share).
_FORBIDDEN = ("/", "\\", "..", "\x00")


def template_file(templates_dir: Path, template: object) -> Path:
    """The file `template` names in templates_dir: `minimal` or `minimal.ini`.

    InvalidRun when the name could reach outside templates_dir, or no such
    file is there; the message names the template and the folder.
    """
    if not isinstance(template, str) or not template.strip():
        raise InvalidRun(f"template {template!r} not found: it names no file in {templates_dir}")
    name = file_name(template)
    path = templates_dir / name
    if not path.is_file():
        raise InvalidRun(f"template {template!r} not found: no file {name} in {templates_dir}")
    return path


def file_name(template: str) -> str:
    """`minimal` or `minimal.ini` -> `minimal.ini`; InvalidRun for a name that is a path."""
    for forbidden in _FORBIDDEN:
        if forbidden in template:
            raise InvalidRun(
                f"template {template!r} is not a template name: it contains {forbidden!r}"
            )
    return template if template.endswith(SUFFIX) else template + SUFFIX


def with_overrides(
    template: Mapping[str, Mapping[str, object]],
    overrides: Mapping[str, Mapping[str, object]],
) -> dict[str, dict[str, object]]:
    """The template with each override's section and key set over it (new ones added)."""
    merged = {section: dict(options) for section, options in template.items()}
    for section, options in overrides.items():
        merged.setdefault(section, {}).update(options)
    return merged


def configuration(
    templates_dir: Path, template: object, overrides: Mapping[str, Mapping[str, object]]
) -> dict[str, dict[str, object]]:
    """The template's sections with `overrides` applied; InvalidRun if it cannot be read."""
    return with_overrides(inifile.read_ini(template_file(templates_dir, template)), overrides)
