"""Shell completion: `fusion-runner completion bash|zsh|fish` and the completer it calls.

argcomplete does the shells' part (one script per shell, each asking the
program itself what may follow), so commands, flags and choices complete as
the parser defines them, and run ids as the database holds them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from typing import Any

import argcomplete
from argcomplete.shell_integration import shellcode

from fusion_runner.cli.exitcodes import EXIT_OK
from fusion_runner.core import config as config_module

SHELLS = ("bash", "zsh", "fish")
PROGRAM = "fusion-runner"
HOW_TO_INSTALL = f"""\
to install:
  bash  {PROGRAM} completion bash > ~/.local/share/bash-completion/completions/{PROGRAM}
  zsh   {PROGRAM} completion zsh > "${{fpath[1]}}/_{PROGRAM}"   (or eval it in ~/.zshrc)
  fish  {PROGRAM} completion fish > ~/.config/fish/completions/{PROGRAM}.fish"""
MAX_IDS = 200


def cmd_completion(args: argparse.Namespace, settings: config_module.Config) -> int:
    print(shellcode([PROGRAM], shell=args.shell))
    return EXIT_OK


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell and exit when it asks (it sets _ARGCOMPLETE); else return at once."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    for action in _id_arguments(parser):
        action.completer = run_ids  # type: ignore[attr-defined]
    argcomplete.autocomplete(parser)


def run_ids(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Ids of runs starting with `prefix`, from the database the other settings name."""
    from fusion_runner.core import clientdb

    try:
        settings = config_module.from_args(parsed_args)
        store = clientdb.open_existing(settings.database_url)
    except Exception:  # a completion never prints an error into the command line
        return []
    try:
        return store.ids_with_prefix(prefix, limit=MAX_IDS)
    except Exception:
        return []
    finally:
        store.close()


def _id_arguments(parser: argparse.ArgumentParser) -> Iterable[argparse.Action]:
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _id_arguments(sub)
        elif not action.option_strings and action.metavar == "ID":
            yield action
