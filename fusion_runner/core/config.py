"""Configuration: flag > environment > TOML file > default; one ConfigError per bad key.

Every value a source gives is checked where it is read, so the error names the key and
the source it came from (``from FUSION_RUNNER_X``, ``from --x``, ``from FILE``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fusion_runner.core.errors import ConfigError

DEFAULT_SIM_COMMAND: tuple[str, ...] = (
    "{python}", "-m", "fusion_runner.refsim", "--config", "{config}",
    "--progress-file", "{progress}", "--output-dir", "{output_dir}",
)  # fmt: skip
ENV_PREFIX = "FUSION_RUNNER_"
# Where the TOML file is looked for when no --config names one (SPEC §8).
CONFIG_ENV = "FUSION_RUNNER_CONFIG"
SYSTEM_CONFIG = Path("/etc/fusion-runner/config.toml")
DEFAULT_SOURCE = "default"
# What a client command needs to find the runs; the daemon's settings are its own.
CLIENT_KEYS = ("database_url", "runs_dir")
log = logging.getLogger("fusion_runner")

SHUTDOWN_MODES = ("detach", "terminate")
PROGRESS_SOURCES = ("auto", "file", "log")
EXECUTORS = ("local", "slurm")
STALL_ACTIONS = ("warn", "cancel")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Room for the cap's marker line and whole lines of output in what a capped log keeps.
MIN_LOG_CAP_BYTES = 4096
# Every float key is a duration: past a century it is a typo, and it would overflow the
# datetime arithmetic (leases, stalls) the daemon does with it.
MAX_SECONDS = 100 * 365 * 24 * 3600.0
_SQLITE = "sqlite:///"
_POSTGRES = "postgresql://"
_PSYCOPG = "postgresql+psycopg://"


@dataclass(frozen=True)
class Config:
    database_url: str = "sqlite:///data/gui_runs/runs.db"
    runs_dir: Path = Path("data/gui_runs")
    sim_command: tuple[str, ...] = DEFAULT_SIM_COMMAND
    max_concurrent_runs: int = 1
    # Cores of live runs at most (core/cores.py counts a run's); default: this machine's CPUs.
    max_cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    stop_grace_seconds: float = 10.0
    poll_interval_seconds: float = 1.0
    on_shutdown: str = "detach"  # "detach" | "terminate"
    log_level: str = "INFO"
    worker_id: str = field(default_factory=socket.gethostname)
    lease_timeout_seconds: float = 60.0
    templates_dir: Path | None = None
    progress_source: str = "auto"  # "auto" | "file" | "log"
    group_write: bool = False
    # Not in SPEC §8's table: how often at most a run's progress columns are written.
    progress_interval_seconds: float = 0.05
    # Where runs execute: "local" (a shim per run on this machine) or "slurm".
    executor: str = "local"
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_time_limit: str | None = None
    slurm_extra_args: tuple[str, ...] = ()
    slurm_poll_seconds: float = 2.0
    # How often at most every live run's progress file and log are read whatever
    # inotify says: for writes it cannot see (other nodes of a shared file system).
    progress_poll_seconds: float = 1.0
    # A RUNNING run whose progress columns have not moved for this long is marked
    # stalled (0: never); then "warn" (marked, logged) or "cancel" (stopped, FAILED).
    stall_after_seconds: float = 0.0
    on_stall: str = "warn"  # "warn" | "cancel"
    # A live run's logs/sim.log past this many bytes keeps its newest part (0: no cap).
    max_log_bytes: int = 256 * 1024 * 1024


KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))
_KNOWN = ", ".join(KEYS)


def sqlalchemy_url(database_url: str) -> str:
    """The URL for SQLAlchemy: plain ``postgresql://`` means psycopg 3."""
    if database_url.startswith(_POSTGRES):
        return _PSYCOPG + database_url.removeprefix(_POSTGRES)
    return database_url


def redacted_url(database_url: str) -> str:
    """The URL for a log line: a PostgreSQL password never reaches the journal."""
    scheme, separator, rest = database_url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not separator or not at or ":" not in credentials:
        return database_url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (relative stays relative), else None."""
    if not database_url.startswith(_SQLITE):
        return None
    path = database_url.removeprefix(_SQLITE).partition("?")[0]
    return Path(path) if path else None


def _is_worker_id(value: str) -> bool:
    return value != "" and all(ch.isprintable() and not ch.isspace() for ch in value)


@dataclass(frozen=True)
class _Key:
    kind: str  # how a source spells it: "str" | "int" | "float" | "argv" | "bool"
    requirement: str  # completes "KEY: ..." when the value is wrong
    valid: Callable[[Any], bool]
    normalize: Callable[[Any], Any] = lambda value: value
    help: str = ""


_KEYS: dict[str, _Key] = {
    "database_url": _Key(
        "str", f"must be {_SQLITE}PATH, {_POSTGRES}... or {_PSYCOPG}...",
        lambda v: sqlite_path(v) is not None or v.startswith((_POSTGRES, _PSYCOPG)),
        help="sqlite:///PATH or postgresql://... (psycopg 3)"),
    "runs_dir": _Key(
        "str", "must be a non-empty path", lambda v: os.fspath(v) != "", Path,
        help="directory holding one folder per run"),
    "sim_command": _Key(
        "argv", "must be a non-empty list of non-empty strings", lambda v: bool(v) and all(v),
        help="simulation argv template, one shell-style string (never run by a shell)"),
    "max_concurrent_runs": _Key(
        "int", "must be an integer >= 1", lambda v: v >= 1,
        help="runs executing at once"),
    "max_cores": _Key(
        "int", "must be an integer >= 1", lambda v: v >= 1,
        help="cores the live runs take at most, each run counted by the processes it runs "
             "(default: this machine's CPUs); a larger run starts alone"),
    "stop_grace_seconds": _Key(
        "float", "must be a finite number >= 0", lambda v: math.isfinite(v) and v >= 0,
        help="seconds between SIGTERM and SIGKILL when stopping a run"),
    "poll_interval_seconds": _Key(
        "float", "must be a finite number > 0", lambda v: math.isfinite(v) and v > 0,
        help="fallback poll interval in seconds"),
    "on_shutdown": _Key(
        "str", "must be 'detach' or 'terminate'", lambda v: v in SHUTDOWN_MODES,
        help="what happens to running simulations when the daemon stops: detach or terminate"),
    "log_level": _Key(
        "str", f"must be one of {', '.join(LOG_LEVELS)}", lambda v: v.upper() in LOG_LEVELS,
        str.upper, help="DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    "worker_id": _Key(
        "str", "must be non-empty, without whitespace or control characters", _is_worker_id,
        help="this daemon's name on the database"),
    "lease_timeout_seconds": _Key(
        "float", "must be a finite number > 0", lambda v: math.isfinite(v) and v > 0,
        help="seconds without a heartbeat after which another daemon fails a worker's runs"),
    "templates_dir": _Key(
        "str", "must be a non-empty path", lambda v: os.fspath(v) != "", Path,
        help="folder of INI templates a run's `template` names (config_json: overrides)"),
    "progress_source": _Key(
        "str", "must be 'auto', 'file' or 'log'", lambda v: v in PROGRESS_SOURCES,
        help="progress from progress.jsonl (file), FUSION's log (log) or the file once valid"),
    "group_write": _Key(
        "bool", "must be true or false", lambda v: isinstance(v, bool),
        help="database files, runs_dir and run folders writable by the daemon's group"),
    "progress_interval_seconds": _Key(
        "float", "must be a finite number >= 0", lambda v: math.isfinite(v) and v >= 0,
        help="at most one progress write per run per this many seconds"),
    "executor": _Key(
        "str", "must be 'local' or 'slurm'", lambda v: v in EXECUTORS,
        help="where runs execute: local (this machine) or slurm (a job per run)"),
    "slurm_partition": _Key(
        "str", "must be a non-empty partition name", bool,
        help="sbatch --partition (default: the cluster's default partition)"),
    "slurm_account": _Key(
        "str", "must be a non-empty account name", bool,
        help="sbatch --account"),
    "slurm_time_limit": _Key(
        "str", "must be a Slurm time such as 90, 4:00:00 or 2-00:00:00", bool,
        help="sbatch --time (default: the partition's)"),
    "slurm_extra_args": _Key(
        "argv", "must be a list of strings", lambda v: all(v),
        help="more sbatch options, one shell-style string (never run by a shell)"),
    "progress_poll_seconds": _Key(
        "float", "must be a finite number > 0", lambda v: math.isfinite(v) and v > 0,
        help="every live run's progress file and log read at least this often "
             "(writes inotify cannot see: other nodes of a shared file system)"),
    "stall_after_seconds": _Key(
        "float", "must be a finite number >= 0 (0: off)", lambda v: math.isfinite(v) and v >= 0,
        help="a RUNNING run whose progress has not moved for this many seconds is marked "
             "stalled (0, the default: never)"),
    "on_stall": _Key(
        "str", "must be 'warn' or 'cancel'", lambda v: v in STALL_ACTIONS,
        help="what a stall does: warn (marked and logged) or cancel (stopped, FAILED)"),
    "max_log_bytes": _Key(
        "int", f"must be 0 (no cap) or an integer >= {MIN_LOG_CAP_BYTES}",
        lambda v: v == 0 or v >= MIN_LOG_CAP_BYTES,
        help="a run's logs/sim.log larger than this many bytes is cut to its newest half "
             "while the simulation writes it, with a line saying how much was dropped "
             "(0: never)"),
    "slurm_poll_seconds": _Key(
        "float", "must be a finite number > 0", lambda v: math.isfinite(v) and v > 0,
        help="how often at most Slurm is asked about the jobs (one squeue for all)"),
}  # fmt: skip


def _from_toml(spec: _Key, value: object) -> object:
    """The value in canonical type, or ValueError: TOML values must have the right type."""
    if spec.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if spec.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if spec.kind == "argv" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if spec.kind == "str" and isinstance(value, str):
        return value
    if spec.kind == "bool" and isinstance(value, bool):
        return value
    raise ValueError(spec.requirement)


def _from_text(spec: _Key, text: str) -> object:
    """The value of a string from the environment or a flag, or ValueError."""
    try:
        if spec.kind == "int":
            return int(text)
        if spec.kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(spec.requirement) from None
    if spec.kind == "argv":
        try:
            return tuple(shlex.split(text))
        except ValueError as exc:
            raise ValueError(f"must be a shell-style command line ({exc})") from None
    if spec.kind == "bool":
        if text.lower() not in _BOOLEANS:
            raise ValueError(spec.requirement)
        return _BOOLEANS[text.lower()]
    return text


def _value(key: str, raw: object, source: str, convert: Callable[[_Key, Any], object]) -> Any:
    """Convert and validate one value; the ConfigError names the key and its source."""
    spec = _KEYS[key]
    try:
        value = convert(spec, raw)
        if not spec.valid(value):
            raise ValueError(spec.requirement)
        _check_bounds(spec, value)
    except OverflowError:
        raise ConfigError(f"{key}: too large, got {raw!r} ({source})") from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}, got {raw!r} ({source})") from None
    return spec.normalize(value)


def _check_bounds(spec: _Key, value: object) -> None:
    """What no key accepts: a duration past MAX_SECONDS, a NUL in a text (the OS refuses
    it in a path or an argument only later, and then the daemon, not the file, is blamed)."""
    if spec.kind == "float" and isinstance(value, float) and value > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS:.0f} seconds")
    texts = value if isinstance(value, tuple) else (value,)
    if any(isinstance(text, str) and "\0" in text for text in texts):
        raise ValueError("must not contain a NUL character")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _flag_layer(flags: Mapping[str, str]) -> dict[str, Any]:
    layer = {}
    for key, text in flags.items():
        if key not in _KEYS:
            raise ConfigError(f"{key}: unknown configuration key (known: {_KNOWN})")
        layer[key] = _value(key, text, f"from {_flag(key)}", _from_text)
    return layer


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer = {}
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        key = var.removeprefix(ENV_PREFIX).lower()
        if key not in _KEYS or var != ENV_PREFIX + key.upper():
            # A variable of another version or a typo in a shell profile must
            # not break every command: said once, then ignored.
            known = ", ".join(ENV_PREFIX + k.upper() for k in KEYS)
            log.warning("%s: unknown environment variable, ignored (known: %s, %s)",
                        var, CONFIG_ENV, known)
            continue
        layer[key] = _value(key, text, f"from {var}", _from_text)
    return layer


def find_config_file(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The TOML file to read: --config, $FUSION_RUNNER_CONFIG, the user's, the system's.

    The first two must exist (reading them reports it otherwise); the user's
    ($XDG_CONFIG_HOME or ~/.config, then fusion-runner/config.toml) and the
    system's are taken only where they are files. None: the defaults alone.
    """
    if explicit:
        return Path(explicit)
    if named := environ.get(CONFIG_ENV):
        return Path(named)
    home = environ.get("HOME") or os.path.expanduser("~")
    user_dir = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    for candidate in (Path(user_dir) / "fusion-runner" / "config.toml", SYSTEM_CONFIG):
        if _is_file(candidate):
            return candidate
    return None


def _is_file(path: Path) -> bool:
    # A HOME this user may not enter (sudo -u keeps the caller's) is no file here.
    try:
        return path.is_file()
    except OSError:
        return False


def _read_toml(name: str) -> dict[str, Any]:
    try:
        with open(name, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {name} is not valid TOML: {exc}") from exc


def _file_layer(config_file: str | os.PathLike[str]) -> dict[str, Any]:
    name = os.fspath(config_file)
    layer = {}
    for key, raw in _read_toml(name).items():
        if key not in _KEYS:
            raise ConfigError(f"{key}: unknown key in config file {name} (known: {_KNOWN})")
        layer[key] = _value(key, raw, f"from {name}", _from_toml)
    return layer


@dataclass(frozen=True)
class Resolved:
    """The configuration and, per key, where its value came from."""

    config: Config
    sources: dict[str, str]
    config_file: Path | None = None

    def origin(self, key: str) -> str:
        """Where the key's value came from, in words: for a message about a wrong value."""
        source = self.sources[key]
        if source != DEFAULT_SOURCE:
            return f"{key} from {source}"
        searched = "no configuration file found" if self.config_file is None else (
            f"not set in {self.config_file}")
        return f"{key}: the built-in default; {searched}"


def resolve(
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Resolved:
    """flags > environment (default os.environ) > file > defaults, with each value's source."""
    # Read in this order so that an unknown variable's warning comes before an
    # error about a value; applied flags first.
    env = _env_layer(os.environ if environ is None else environ)
    file = {} if config_file is None else _file_layer(config_file)
    layers = [
        (_flag_layer(flags or {}), _flag),
        (env, lambda k: ENV_PREFIX + k.upper()),
        (file, lambda _key: os.fspath(config_file or "")),
    ]
    values: dict[str, Any] = {}
    sources = {}
    for key in KEYS:
        for layer, source in layers:
            if key in layer:
                values[key], sources[key] = layer[key], source(key)
                break
        else:
            sources[key] = DEFAULT_SOURCE
    found = None if config_file is None else Path(config_file)
    return Resolved(Config(**values), sources, found)


def load(
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Config:
    """The configuration from flags > environment (default os.environ) > file > defaults."""
    return resolve(flags, environ, config_file).config


def _default_text(key: str) -> str:
    if key == "worker_id":
        return "the host name"
    if key == "max_cores":
        return "this machine's CPUs"
    if key == "templates_dir":
        return "unset: config_json is the whole configuration"
    default = getattr(Config, key)
    return shlex.join(default) if key == "sim_command" else str(default)


def add_arguments(
    parser: argparse.ArgumentParser, keys: Iterable[str] = KEYS, hidden: Iterable[str] = ()
) -> None:
    """Add --config FILE and one flag per key; a flag not given sets nothing.

    `hidden` flags are accepted without being listed in --help: settings given
    before a subcommand that does not list them (`fusion-runner --worker-id X daemon`).
    """
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"TOML configuration file (else ${CONFIG_ENV}, "
             f"$XDG_CONFIG_HOME/fusion-runner/config.toml, {SYSTEM_CONFIG})")
    hidden = set(hidden)
    for key in keys:
        env = ENV_PREFIX + key.upper()
        text = f"{_KEYS[key].help} (env {env}; default: {_default_text(key)})"
        parser.add_argument(
            _flag(key), dest=key, metavar=key.upper(), default=argparse.SUPPRESS,
            help=argparse.SUPPRESS if key in hidden else text.replace("%", "%%"),
        )  # fmt: skip


def flags_of(namespace: argparse.Namespace) -> dict[str, str]:
    return {key: value for key in KEYS if (value := getattr(namespace, key, None)) is not None}


def resolve_args(
    namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Resolved:
    """resolve() with the flags set in namespace and the file find_config_file chooses."""
    environ = os.environ if environ is None else environ
    found = find_config_file(getattr(namespace, "config", None), environ)
    return resolve(flags_of(namespace), environ, found)


def from_args(namespace: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    return resolve_args(namespace, environ).config
