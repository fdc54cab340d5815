"""`fusion-runner config`: the settings in effect here and where each comes from.

Read as the daemon and every command read them (SPEC §8): the file found on
the search path, then environment variables and flags over it. A password in
a PostgreSQL URL is never printed.
"""

from __future__ import annotations

import argparse
import json
import shlex

from fusion_runner.cli.exitcodes import EXIT_OK
from fusion_runner.core import config as config_module


def cmd_config(args: argparse.Namespace, settings: config_module.Config) -> int:
    resolved = config_module.resolve_args(args)
    shown = {key: shown_value(key, getattr(resolved.config, key)) for key in config_module.KEYS}
    if args.json:
        print(json.dumps({
            "config_file": None if resolved.config_file is None else str(resolved.config_file),
            "settings": {key: {"value": value, "source": resolved.sources[key]}
                         for key, value in shown.items()},
        }, indent=2))  # fmt: skip
        return EXIT_OK
    print(f"config file: {resolved.config_file or 'none found (' + searched() + ')'}")
    width = max(map(len, config_module.KEYS))
    for key, value in shown.items():
        text = shlex.join(value) if isinstance(value, list) else str(value)
        print(f"{key:<{width}}  {text}  ({resolved.sources[key]})")
    return EXIT_OK


def shown_value(key: str, value: object) -> str | int | float | bool | list[str] | None:
    if key == "database_url":
        return config_module.redacted_url(str(value))
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def searched() -> str:
    return (f"searched ${config_module.CONFIG_ENV}, "
            f"$XDG_CONFIG_HOME/fusion-runner/config.toml or ~/.config/fusion-runner/config.toml, "
            f"{config_module.SYSTEM_CONFIG}")
