"""The run directory: ids, the layout, config.ini written once, argv and environment (SPEC §3-4).

What config.ini holds is `runconfig`'s: config_json validated and rendered.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fusion_runner.core import runconfig, sharing, templates
from fusion_runner.core.errors import InvalidRun

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{12}")

DIR_MODE = sharing.PRIVATE.folder
CONFIG_MODE = sharing.PRIVATE.file

_PLACEHOLDER = re.compile(r"\{(python|run_id|run_dir|config|progress|output_dir|log)\}")


def new_run_id() -> str:
    """A fresh id that validate_run_id accepts: 48 random bits as 12 lowercase hex digits."""
    return secrets.token_hex(6)


def validate_run_id(run_id: object) -> str:
    if isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id):
        return run_id
    raise InvalidRun(f"invalid run id {_quote(run_id)}: must be 12 lowercase hex characters")


def _quote(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the directory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    run_id: str
    run_dir: Path
    config_file: Path
    log_file: Path
    progress_file: Path
    output_dir: Path
    exit_record: Path
    # Written right before the spawn: a run that has it may have started.
    spawn_marker: Path

    @classmethod
    def under(cls, runs_dir: Path, run_id: str) -> RunPaths:
        """The layout of runs_dir/run_id, runs_dir resolved (InvalidRun for a bad id)."""
        return cls.at(runs_dir.resolve() / validate_run_id(run_id), run_id)

    @classmethod
    def at(cls, run_dir: Path, run_id: str) -> RunPaths:
        """The layout inside a folder as given: one a daemon recorded, read by a client."""
        return cls(
            run_id=run_id,
            run_dir=run_dir,
            config_file=run_dir / "config.ini",
            log_file=run_dir / "logs" / "sim.log",
            progress_file=run_dir / "progress.jsonl",
            output_dir=run_dir / "output",
            exit_record=run_dir / "exit.json",
            spawn_marker=run_dir / ".spawned",
        )


def prepare(
    runs_dir: Path,
    run_id: str,
    config_json: str,
    *,
    template: str | None = None,
    templates_dir: Path | None = None,
    modes: sharing.Modes = sharing.PRIVATE,
) -> RunPaths:
    """Lay out the run directory; InvalidRun, before anything is written, for a bad row.

    config.ini is `config_json` rendered; with `templates_dir`, it is the file
    `template` names there with `config_json` applied over it (SPEC §3). A
    config.ini already in the run folder (the GUI writes its own) is kept, and
    then the template is not looked up at all.

    Everything inside run_dir is made through a descriptor of run_dir opened
    without following symlinks, so nothing is ever written outside runs_dir.
    Folders and config.ini get `modes`; a run folder of another user (the GUI
    made it) is used if the daemon may write into it. Other OSErrors
    (permissions, a full disk) propagate, naming the path.
    """
    paths = RunPaths.under(runs_dir, run_id)
    config = runconfig.parse_config_json(config_json)

    def render() -> str:
        if templates_dir is None:
            return runconfig.render_ini(config)
        return runconfig.render_ini(templates.configuration(templates_dir, template, config))

    # Rendered before anything is made, so that a bad row or a missing template
    # writes nothing; unless config.ini is there already, when it is not needed.
    kept = templates_dir is not None and os.path.lexists(paths.config_file)
    ini = None if kept else render()
    paths.run_dir.parent.mkdir(parents=True, exist_ok=True)
    runs_fd = os.open(paths.run_dir.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        run_fd = _private_dir(runs_fd, paths.run_dir, modes.folder)
    finally:
        os.close(runs_fd)
    try:
        for path in (paths.log_file.parent, paths.output_dir):
            os.close(_private_dir(run_fd, path, modes.folder))
        # A config.ini seen above but gone since is rendered now after all.
        _write_once(run_fd, paths.config_file, lambda: render() if ini is None else ini,
                    modes.file)
    finally:
        os.close(run_fd)
    return paths


def _private_dir(parent_fd: int, path: Path, mode: int = DIR_MODE) -> int:
    """Make or reuse directory path (in parent_fd) with `mode` exactly; its descriptor."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path.name, mode, dir_fd=parent_fd)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path.name, flags, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidRun(f"{path} is a symlink or not a directory") from None
        raise _naming(error, f"cannot make or open {path}", path.parent) from None
    try:
        _set_mode(fd, path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_mode(fd: int, path: Path, mode: int) -> None:
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() and os.geteuid() != 0:
        # Another user's folder (a GUI made it): used as it is if we may write in it.
        if not sharing.may_write(info):
            raise PermissionError(errno.EACCES, sharing.refusal(path, info))
        return
    os.fchmod(fd, mode)  # mkdir's mode was masked by the umask


def _naming(error: OSError, doing: str, needs: Path) -> OSError:
    """The same error, its message naming the path (and the access it needed, if denied)."""
    if error.errno not in (errno.EACCES, errno.EPERM):
        return type(error)(error.errno, f"{doing}: {error.strerror}")
    return type(error)(error.errno, f"{doing}: {error.strerror} "
                                    f"(needs write and search access to {needs})")


def _write_once(dir_fd: int, path: Path, render: Callable[[], str], mode: int) -> None:
    """Write path's name in dir_fd atomically (temp file + os.replace), unless it exists."""
    name = path.name
    with contextlib.suppress(FileNotFoundError):
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return
    text = render()
    _remove_stale_temporaries(dir_fd, name)
    temporary = f".{name}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(temporary, flags, mode, dir_fd=dir_fd)
            with open(fd, "w", encoding="utf-8") as file:
                os.fchmod(fd, mode)  # the umask may have masked the group's bits
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as error:  # denied, or a full disk (ENOSPC, EDQUOT)
            raise _naming(error, f"cannot write {path}", path.parent) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def _remove_stale_temporaries(dir_fd: int, name: str) -> None:
    """Temporary files of `name` a daemon killed mid-write left (its cleanup never ran).
    Only the run's owner lays its folder out, so none is being written now."""
    stale = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp")
    for entry in os.listdir(dir_fd):
        if stale.fullmatch(entry):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=dir_fd)


# --- the command -----------------------------------------------------------------------------


def expand_command(template: Sequence[str], paths: RunPaths, python: str) -> list[str]:
    """The argv: each placeholder replaced inside any token, in one pass, other braces kept."""
    if isinstance(template, str):
        raise TypeError("the command template is a list of arguments, not a string")
    values = {
        "python": python,
        "run_id": paths.run_id,
        "run_dir": str(paths.run_dir),
        "config": str(paths.config_file),
        "progress": str(paths.progress_file),
        "output_dir": str(paths.output_dir),
        "log": str(paths.log_file),
    }
    return [_PLACEHOLDER.sub(lambda found: values[found.group(1)], token) for token in template]


def environment(paths: RunPaths, base: Mapping[str, str]) -> dict[str, str]:
    return {
        **base,
        "FUSION_RUN_ID": paths.run_id,
        "FUSION_RUN_DIR": str(paths.run_dir),
        "FUSION_CONFIG_FILE": str(paths.config_file),
        "FUSION_PROGRESS_FILE": str(paths.progress_file),
        "FUSION_OUTPUT_DIR": str(paths.output_dir),
    }
