"""Unit tests for fusion_runner.config: sources, precedence, validation, argparse."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from pathlib import Path

import pytest

from fusion_runner.core import config
from fusion_runner.core.errors import ConfigError

ALL_TOML = """
database_url = "postgresql://u@db/runs"
runs_dir = "/srv/runs"
sim_command = ["python3", "-m", "sim", "{config}"]
max_concurrent_runs = 4
stop_grace_seconds = 3
poll_interval_seconds = 0.25
on_shutdown = "terminate"
log_level = "debug"
worker_id = "node-7"
"""

ALL_TEXT = {
    "database_url": "postgresql+psycopg://u@db/runs",
    "runs_dir": "/srv/runs",
    "sim_command": "python3 -m sim {config}",
    "max_concurrent_runs": "4",
    "stop_grace_seconds": "3",
    "poll_interval_seconds": "0.25",
    "on_shutdown": "terminate",
    "log_level": "debug",
    "worker_id": "node-7",
}

EXPECTED = {
    "runs_dir": Path("/srv/runs"),
    "sim_command": ("python3", "-m", "sim", "{config}"),
    "max_concurrent_runs": 4,
    "stop_grace_seconds": 3.0,
    "poll_interval_seconds": 0.25,
    "on_shutdown": "terminate",
    "log_level": "DEBUG",
    "worker_id": "node-7",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runner.toml"
    path.write_text(text, encoding="utf-8")
    return path


def env_of(key: str) -> str:
    return config.ENV_PREFIX + key.upper()


def error_of(**kwargs: object) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        config.load(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="fusion-runner")
    config.add_arguments(result)
    return result


# --- defaults and each source ---------------------------------------------------------


def test_defaults() -> None:
    cfg = config.load(environ={})
    assert cfg == config.Config()
    assert cfg.database_url == "sqlite:///data/gui_runs/runs.db"
    assert cfg.runs_dir == Path("data/gui_runs")
    assert cfg.sim_command == config.DEFAULT_SIM_COMMAND
    assert cfg.sim_command[:3] == ("{python}", "-m", "fusion_runner.refsim")
    assert cfg.max_concurrent_runs == 1
    assert cfg.stop_grace_seconds == 10.0
    assert cfg.poll_interval_seconds == 1.0
    assert cfg.on_shutdown == "detach"
    assert cfg.log_level == "INFO"
    assert cfg.worker_id == socket.gethostname()


def test_config_is_frozen() -> None:
    cfg = config.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.log_level = "DEBUG"  # type: ignore[misc]


def test_every_key_from_toml(tmp_path: Path) -> None:
    cfg = config.load(environ={}, config_file=write(tmp_path, ALL_TOML))
    assert cfg.database_url == "postgresql://u@db/runs"
    for key, value in EXPECTED.items():
        assert getattr(cfg, key) == value, key
    assert type(cfg.stop_grace_seconds) is float  # an int in TOML becomes a float


def test_every_key_from_environment() -> None:
    environ = {env_of(key): text for key, text in ALL_TEXT.items()}
    environ["UNRELATED"] = "ignored"
    cfg = config.load(environ=environ)
    assert cfg.database_url == "postgresql+psycopg://u@db/runs"
    for key, value in EXPECTED.items():
        assert getattr(cfg, key) == value, key


def test_every_key_from_flags() -> None:
    cfg = config.load(flags=ALL_TEXT, environ={})
    assert cfg.database_url == "postgresql+psycopg://u@db/runs"
    for key, value in EXPECTED.items():
        assert getattr(cfg, key) == value, key


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSION_RUNNER_MAX_CONCURRENT_RUNS", "5")
    assert config.load().max_concurrent_runs == 5


def test_config_file_accepts_a_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'worker_id = "w1"\n')
    assert config.load(environ={}, config_file=str(path)).worker_id == "w1"


# --- precedence ----------------------------------------------------------------------


def test_precedence_of_all_four_levels(tmp_path: Path) -> None:
    path = write(tmp_path, "max_concurrent_runs = 2\n")
    environ = {"FUSION_RUNNER_MAX_CONCURRENT_RUNS": "3"}
    flags = {"max_concurrent_runs": "4"}
    assert config.load(environ={}).max_concurrent_runs == 1
    assert config.load(environ={}, config_file=path).max_concurrent_runs == 2
    assert config.load(environ=environ, config_file=path).max_concurrent_runs == 3
    assert config.load(flags, environ, path).max_concurrent_runs == 4


def test_sources_merge_key_by_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "ERROR"\nworker_id = "from-file"\n')
    cfg = config.load({"worker_id": "from-flag"}, {"FUSION_RUNNER_RUNS_DIR": "/env"}, path)
    assert (cfg.log_level, cfg.worker_id, cfg.runs_dir) == ("ERROR", "from-flag", Path("/env"))
    assert cfg.max_concurrent_runs == 1


# --- type errors and validation -------------------------------------------------------

BAD_TEXT = [
    ("database_url", "mysql://x/y"),
    ("database_url", "sqlite:///"),
    ("database_url", "sqlite://relative.db"),
    ("database_url", ""),
    ("runs_dir", ""),
    ("sim_command", ""),
    ("sim_command", "python ''"),
    ("sim_command", "python 'unclosed"),
    ("max_concurrent_runs", "0"),
    ("max_concurrent_runs", "-3"),
    ("max_concurrent_runs", "2.5"),
    ("max_concurrent_runs", "many"),
    ("stop_grace_seconds", "-1"),
    ("stop_grace_seconds", "soon"),
    ("stop_grace_seconds", "nan"),
    ("stop_grace_seconds", "inf"),
    ("poll_interval_seconds", "0"),
    ("poll_interval_seconds", "-0.5"),
    ("poll_interval_seconds", "-inf"),
    ("on_shutdown", "Detach"),
    ("on_shutdown", "kill"),
    ("log_level", "verbose"),
    ("log_level", ""),
    ("worker_id", ""),
    ("worker_id", "node 7"),
    ("worker_id", "node\t7"),
    ("worker_id", "node\x007"),
    ("worker_id", "node\x1b7"),
]


@pytest.mark.parametrize(("key", "text"), BAD_TEXT)
def test_bad_environment_value_names_key_and_variable(key: str, text: str) -> None:
    message = error_of(environ={env_of(key): text})
    assert message.startswith(f"{key}: must be ")
    assert message.endswith(f"(from {env_of(key)})")


@pytest.mark.parametrize(("key", "text"), BAD_TEXT)
def test_bad_flag_value_names_key_and_flag(key: str, text: str) -> None:
    message = error_of(flags={key: text})
    assert message.startswith(f"{key}: must be ")
    assert message.endswith(f"(from --{key.replace('_', '-')})")


def test_error_shows_the_value() -> None:
    message = error_of(environ={"FUSION_RUNNER_MAX_CONCURRENT_RUNS": "-3"})
    assert message == (
        "max_concurrent_runs: must be an integer >= 1, got '-3' "
        "(from FUSION_RUNNER_MAX_CONCURRENT_RUNS)"
    )


def test_unbalanced_quote_says_why() -> None:
    message = error_of(environ={"FUSION_RUNNER_SIM_COMMAND": "python 'x"})
    assert "shell-style command line (No closing quotation)" in message


BAD_TOML = [
    ("database_url", "42"),
    ("database_url", '"ftp://x"'),
    ("runs_dir", "7"),
    ("runs_dir", '""'),
    ("sim_command", '"python -m sim"'),
    ("sim_command", "[]"),
    ("sim_command", '["python", 3]'),
    ("sim_command", '["python", ""]'),
    ("max_concurrent_runs", "true"),
    ("max_concurrent_runs", "2.0"),
    ("max_concurrent_runs", '"2"'),
    ("max_concurrent_runs", "-3"),
    ("stop_grace_seconds", "false"),
    ("stop_grace_seconds", '"10"'),
    ("stop_grace_seconds", "-1"),
    ("stop_grace_seconds", "nan"),
    ("poll_interval_seconds", "inf"),
    ("poll_interval_seconds", "0"),
    ("on_shutdown", '"TERMINATE"'),
    ("log_level", '["INFO"]'),
    ("log_level", '"loud"'),
    ("worker_id", '"a b"'),
    ("worker_id", "1"),
]


@pytest.mark.parametrize(("key", "literal"), BAD_TOML)
def test_bad_toml_value_names_key_and_file(tmp_path: Path, key: str, literal: str) -> None:
    path = write(tmp_path, f"{key} = {literal}\n")
    message = error_of(config_file=path)
    assert message.startswith(f"{key}: must be ")
    assert message.endswith(f"(from {path})")


def test_bad_value_is_rejected_even_when_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, "max_concurrent_runs = -1\n")
    message = error_of(flags={"max_concurrent_runs": "2"}, config_file=path)
    assert message.startswith("max_concurrent_runs:")


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_level_any_case_stored_upper(level: str) -> None:
    assert config.load(environ={"FUSION_RUNNER_LOG_LEVEL": level}).log_level == level.upper()


@pytest.mark.parametrize(
    "url",
    ["sqlite:///runs.db", "sqlite:////abs/runs.db", "postgresql://u:p@h:5432/d",
     "postgresql+psycopg://h/d"],
)  # fmt: skip
def test_accepted_database_urls(url: str) -> None:
    assert config.load(flags={"database_url": url}, environ={}).database_url == url


def test_zero_grace_is_allowed() -> None:
    assert config.load(flags={"stop_grace_seconds": "0"}, environ={}).stop_grace_seconds == 0.0


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "max_concurent_runs = 2\n")
    message = error_of(config_file=path)
    assert message.startswith("max_concurent_runs: unknown key in config file")
    assert str(path) in message


def test_toml_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[runner]\nmax_concurrent_runs = 2\n")
    assert error_of(config_file=path).startswith("runner: unknown key")


@pytest.mark.parametrize(
    "var", ["FUSION_RUNNER_MAX_CONCURENT_RUNS", "FUSION_RUNNER_log_level", "FUSION_RUNNER_"]
)
def test_an_unknown_environment_variable_is_one_warning_and_ignored(
    var: str, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = config.load(environ={var: "1", "FUSION_RUNNER_MAX_CONCURRENT_RUNS": "3"})
    assert loaded.max_concurrent_runs == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{var}: unknown environment variable")


def test_the_config_file_variable_is_not_a_setting() -> None:
    assert config.load(environ={"FUSION_RUNNER_CONFIG": "/x.toml"}) == config.Config(
        worker_id=config.load(environ={}).worker_id)


def test_unknown_flag_key() -> None:
    assert error_of(flags={"colour": "red"}).startswith("colour: unknown configuration key")


# --- the file itself -------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert error_of(config_file=path) == (
        f"cannot read config file {path}: No such file or directory"
    )


def test_directory_as_file_names_the_file(tmp_path: Path) -> None:
    assert error_of(config_file=tmp_path).startswith(f"cannot read config file {tmp_path}: ")


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "max_concurrent_runs = \n")
    message = error_of(config_file=path)
    assert message.startswith(f"config file {path} is not valid TOML: ")
    assert "line 1" in message


def test_non_utf8_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'worker_id = "caf\xe9"\n')
    assert error_of(config_file=path).startswith(f"config file {path} is not valid TOML: ")


# --- sim_command ---------------------------------------------------------------------


def test_sim_command_from_environment_uses_shlex_quotes() -> None:
    text = '"/opt/my python/bin/python" -m sim --tag \'a b\' --x="{config}" $HOME;ls'
    cfg = config.load(environ={"FUSION_RUNNER_SIM_COMMAND": text})
    assert cfg.sim_command == (
        "/opt/my python/bin/python", "-m", "sim", "--tag", "a b", "--x={config}", "$HOME;ls",
    )  # fmt: skip


def test_sim_command_toml_list_is_kept_verbatim(tmp_path: Path) -> None:
    path = write(tmp_path, "sim_command = ['python', 'a b', '$X;y']\n")
    cfg = config.load(environ={}, config_file=path)
    assert cfg.sim_command == ("python", "a b", "$X;y")


# --- argparse ------------------------------------------------------------------------


def test_unset_flags_set_nothing() -> None:
    """So that a setting given before a subcommand is not reset by the subcommand's flags."""
    namespace = parser().parse_args([])
    assert not hasattr(namespace, "config")
    for key in config.KEYS:
        assert not hasattr(namespace, key), key
    assert config.from_args(namespace, environ={}) == config.Config()


def test_from_args_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "warning"\nworker_id = "from-file"\n')
    argv = ["--config", str(path), "--max-concurrent-runs", "3",
            "--sim-command", "python -m sim '{config}'", "--worker-id", "from-flag",
            "--runs-dir", "/r", "--database-url", "sqlite:////tmp/x.db",
            "--stop-grace-seconds", "2.5", "--poll-interval-seconds", "0.1",
            "--on-shutdown", "terminate"]  # fmt: skip
    cfg = config.from_args(parser().parse_args(argv), environ={"FUSION_RUNNER_LOG_LEVEL": "error"})
    assert cfg == config.Config(
        database_url="sqlite:////tmp/x.db", runs_dir=Path("/r"),
        sim_command=("python", "-m", "sim", "{config}"), max_concurrent_runs=3,
        stop_grace_seconds=2.5, poll_interval_seconds=0.1, on_shutdown="terminate",
        log_level="ERROR", worker_id="from-flag",
    )  # fmt: skip


def test_from_args_bad_flag_names_the_flag() -> None:
    namespace = parser().parse_args(["--max-concurrent-runs", "-2"])
    with pytest.raises(
        ConfigError, match=r"^max_concurrent_runs: .*\(from --max-concurrent-runs\)$"
    ):
        config.from_args(namespace, environ={})


def test_help_shows_flags_and_defaults() -> None:
    text = " ".join(parser().format_help().split())
    for key in config.KEYS:
        assert f"--{key.replace('_', '-')}" in text
    assert "--config FILE" in text
    assert "default: sqlite:///data/gui_runs/runs.db" in text
    assert "default: 10.0" in text
    assert "default: '{python}' -m fusion_runner.refsim" in text
    assert "default: the host name" in text


# --- URL helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ("postgresql+psycopg://h/d", "postgresql+psycopg://h/d"),
        ("sqlite:///runs.db", "sqlite:///runs.db"),
    ],
)
def test_sqlalchemy_url(url: str, expected: str) -> None:
    assert config.sqlalchemy_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/gui_runs/runs.db", Path("data/gui_runs/runs.db")),
        ("sqlite:////var/lib/runs.db", Path("/var/lib/runs.db")),
        ("sqlite:///runs.db?timeout=5", Path("runs.db")),
        ("sqlite:///", None),
        ("postgresql://h/d", None),
    ],
)
def test_sqlite_path(url: str, expected: Path | None) -> None:
    assert config.sqlite_path(url) == expected


def test_redacted_url_hides_only_a_password() -> None:
    assert config.redacted_url("postgresql://gui:secret@db.lab:5432/fusion") == (
        "postgresql://gui:***@db.lab:5432/fusion"
    )
    assert config.redacted_url("postgresql://gui@db.lab/fusion") == "postgresql://gui@db.lab/fusion"
    assert config.redacted_url("sqlite:///data/gui_runs/runs.db") == "sqlite:///data/gui_runs/runs.db"
