"""Who may use what the daemon makes: its user alone, or its group too (`group_write`, SPEC §8).

With `group_write` the FUSION GUI or other users of the daemon's group share
one SQLite database and one runs directory with it: the database, its `-wal`
and `-shm`, `runs_dir` and every run folder are made usable by the group
whatever the umask the daemon was started with (systemd's `UMask=0027`).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Modes:
    folder: int
    file: int


PRIVATE = Modes(folder=0o750, file=0o640)
# The set-group-id bit: what is made inside a run folder gets its group too.
GROUP = Modes(folder=0o2770, file=0o660)
_GROUP_BITS = 0o070


def modes_for(group_write: bool) -> Modes:
    return GROUP if group_write else PRIVATE


def open_to_group(database: Path | None, runs_dir: Path) -> str:
    """Everything `group_write` promises, at the daemon's start; one line saying what.

    PermissionError names a folder the daemon may not share.
    """
    umask = open_umask_to_group()
    share_folder(runs_dir)
    changed = []
    if database is not None:
        # Clients make -wal and -shm beside the database when no daemon runs.
        share_folder(database.parent)
        changed = share_database(database)
    return (f"action=group_write group={group_name()} umask={umask:04o} "
            f"runs_dir={runs_dir} database_files_made_0660={len(changed)}")


def open_umask_to_group() -> int:
    """Clear the group bits of the umask and return the new one.

    Then what the daemon and its simulations create (logs, progress, outputs)
    is as usable by the group as its creator asked for.
    """
    current = os.umask(0)
    opened = current & ~_GROUP_BITS
    os.umask(opened)
    return opened


def share_database(database: Path) -> list[Path]:
    """Files 0660 for the database, its -wal and -shm (those that exist and are ours).

    SQLite gives a new -wal or -shm the database file's mode, so this holds
    for those it makes later too. The paths changed are returned.
    """
    changed = []
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if _is_mine(path) and stat.S_IMODE(path.stat().st_mode) != GROUP.file:
            path.chmod(GROUP.file)
            changed.append(path)
    return changed


def share_folder(folder: Path) -> None:
    """Make `folder` (and its parents) and give it mode 2770 if it is ours.

    A folder of another user must already let the daemon write into it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if _is_mine(folder):
        folder.chmod(GROUP.folder)
    elif not may_write(os.stat(folder)):
        raise PermissionError(refusal(folder, os.stat(folder)))


def group_name() -> str:
    try:
        return grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        return str(os.getegid())


def may_write(info: os.stat_result) -> bool:
    """Whether this process may create files in a folder with these attributes."""
    if os.geteuid() == 0:
        return True
    if info.st_uid == os.geteuid():
        needed = stat.S_IWUSR | stat.S_IXUSR
    elif info.st_gid == os.getegid() or info.st_gid in os.getgroups():
        needed = stat.S_IWGRP | stat.S_IXGRP
    else:
        needed = stat.S_IWOTH | stat.S_IXOTH
    return info.st_mode & needed == needed


def refusal(folder: Path, info: os.stat_result) -> str:
    """What access is missing on `folder`, for a message naming it."""
    return (f"{folder} belongs to {_user(info.st_uid)}:{_group(info.st_gid)} with mode "
            f"{stat.S_IMODE(info.st_mode):o}: this daemon ({_user(os.geteuid())}, groups "
            f"{', '.join(sorted({_group(gid) for gid in (os.getegid(), *os.getgroups())}))}) "
            f"may not create files in it; make it writable by the group "
            f"(chmod g+rwx,g+s) or let the daemon create it")


def _is_mine(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.geteuid()
    except FileNotFoundError:
        return False


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
