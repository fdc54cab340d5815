"""FUSION's result folders, reachable from the run folder as `output/fusion`, `-2`, ...

FUSION writes its results in its own checkout
(`<FUSION>/data/output/<network>/<date>/<time>/<thread>/`), and only its log's
`Saving to: DIR` lines tie them to a run. The daemon links each such folder
into the run's `output/` as soon as the log names it, rather than copying the
`*_erlang.json` files when the run ends, because:

- FUSION rewrites those files after every saved iteration: the link shows the
  current results while the run goes on; a copy would show them only at the
  end, could catch a file half-rewritten, and goes stale if FUSION writes on.
- Under the systemd unit everything outside /var/lib/fusion-runner is
  read-only for the daemon (but readable): a link writes only in the run
  folder, and doubles no one's disk use.
- The run folder may be shared with the GUI's user: a link grants no access
  to FUSION's files that their own permissions do not (a copy would be the
  daemon's files, with its modes), and deleting the run folder (as the GUI
  does on delete) removes the link, never FUSION's results.

The price: the link dangles if FUSION's results are moved or deleted; the
folder stays named in the daemon's table, and `fusion-runner show` lists it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

LINK_NAME = "fusion"
MAX_LINKS = 100
_LINK = re.compile(rf"{LINK_NAME}(?:-[0-9]+)?")


def link(output_dir: Path, target: str) -> str:
    """The name in `output_dir` of a symlink to the folder `target`, made unless one is
    there already: the first of fusion, fusion-2, ... that is free.

    Raises ValueError for a relative `target` (relative to what FUSION's
    working directory was, which the daemon cannot know) and OSError when the
    link cannot be made (no output folder, no name left).
    """
    if not os.path.isabs(target):
        raise ValueError(f"not an absolute path: {target!r}")
    # Through a descriptor of output/ itself, never following a symlink in its
    # place: nothing is ever made outside the run folder.
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    folder = os.open(output_dir, flags)
    try:
        for name in _names():
            try:
                os.symlink(target, name, dir_fd=folder)
                return name
            except FileExistsError:
                if _link_target(folder, name) == target:
                    return name
        raise OSError(f"{output_dir}: {LINK_NAME} to {LINK_NAME}-{MAX_LINKS} all taken")
    finally:
        os.close(folder)


def links(output_dir: Path) -> dict[str, str]:
    """The folders `output_dir`'s fusion links point to, each with its link's name."""
    found: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(output_dir), key=lambda entry: _order(entry.name))
    except OSError:
        return found
    for entry in entries:
        if _LINK.fullmatch(entry.name) and entry.is_symlink():
            try:
                found.setdefault(os.readlink(entry.path), entry.name)
            except OSError:
                continue
    return found


def _names() -> Iterator[str]:
    yield LINK_NAME
    for number in range(2, MAX_LINKS + 1):
        yield f"{LINK_NAME}-{number}"


def _order(name: str) -> tuple[int, str]:
    number = name.rpartition("-")[2]
    return (int(number) if number.isdigit() else 1, name)


def _link_target(folder: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=folder)
    except OSError:  # not a link (EINVAL), or gone meanwhile
        return None
