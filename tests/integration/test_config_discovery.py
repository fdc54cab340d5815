"""Which TOML file the daemon and every command read when no --config names one (SPEC §8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_runner.core import config
from fusion_runner.core.errors import ConfigError
from fusion_runner.core.store import Store


def toml(path: Path, **settings: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /etc/fusion-runner/config.toml (the real one is never touched)."""
    path = tmp_path / "etc" / "fusion-runner" / "config.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", path)
    return path


def test_the_first_of_flag_variable_user_system_is_read(
    tmp_path: Path, system_config: Path
) -> None:
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    environ = {"HOME": str(home)}
    assert config.find_config_file(None, environ) is None
    toml(system_config)
    assert config.find_config_file(None, environ) == system_config
    home_file = toml(home / ".config" / "fusion-runner" / "config.toml")
    assert config.find_config_file(None, environ) == home_file
    xdg_file = toml(xdg / "fusion-runner" / "config.toml")
    assert config.find_config_file(None, environ | {"XDG_CONFIG_HOME": str(xdg)}) == xdg_file
    named = environ | {"XDG_CONFIG_HOME": str(xdg), "FUSION_RUNNER_CONFIG": "/named.toml"}
    assert config.find_config_file(None, named) == Path("/named.toml")
    assert config.find_config_file("/flag.toml", named) == Path("/flag.toml")


def test_a_named_file_that_is_missing_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    found = config.find_config_file(None, {"FUSION_RUNNER_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match="nowhere"):
        config.load({}, {}, found)


def ls_in(folder: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_RUNNER_", "XDG_"))}
    return subprocess.run([sys.executable, "-m", "fusion_runner", "ls", "--json"], cwd=folder,
                          env=env | environ, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("how", ["FUSION_RUNNER_CONFIG", "XDG_CONFIG_HOME", "HOME"])
def test_a_command_in_any_folder_finds_the_configured_database(tmp_path: Path, how: str) -> None:
    database = tmp_path / "lab" / "runs.db"
    store = Store.open(f"sqlite:///{database}")
    store.insert_run("abcdef012345", name="found", config_json="{}", template="t")
    store.close()
    settings = {"database_url": f"sqlite:///{database}"}
    environ = {"HOME": str(tmp_path / "home")}
    if how == "FUSION_RUNNER_CONFIG":
        environ[how] = str(toml(tmp_path / "anywhere.toml", **settings))
    elif how == "XDG_CONFIG_HOME":
        environ[how] = str(tmp_path / "xdg")
        toml(tmp_path / "xdg" / "fusion-runner" / "config.toml", **settings)
    else:
        toml(tmp_path / "home" / ".config" / "fusion-runner" / "config.toml", **settings)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = ls_in(elsewhere, environ | {"FUSION_RUNNER_OLD_SETTING": "1"})
    assert result.returncode == 0, result.stderr
    assert [run["id"] for run in json.loads(result.stdout)] == ["abcdef012345"]
    assert "FUSION_RUNNER_OLD_SETTING: unknown environment variable" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_home_this_user_may_not_enter_is_no_config_file(tmp_path: Path) -> None:
    """sudo -u keeps the caller's HOME: unreadable, it is skipped, not a crash."""
    home = tmp_path / "home"
    toml(home / ".config" / "fusion-runner" / "config.toml")
    code = ("import os, sys; from fusion_runner.core import config; "
            "print(config.find_config_file(None, {'HOME': sys.argv[1]}))")
    home.chmod(0o700)
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             sys.executable, "-c", code, str(home)],
                            capture_output=True, text=True, timeout=60)
    if os.geteuid() != 0 or ("Permission denied" in result.stderr and "python" in result.stderr):
        pytest.skip("needs root, and an interpreter that user nobody may run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("None", str(config.SYSTEM_CONFIG))


# --- `fusion-runner config`: the effective settings and their sources ----------------------

SYSTEM_STAND_IN = """\
import sys
from pathlib import Path
from fusion_runner.core import config
from fusion_runner.cli.main import main
config.SYSTEM_CONFIG = Path(sys.argv[1])
sys.exit(main(sys.argv[2:]))
"""


def fusion_runner_with_system_config(
    system_file: Path, folder: Path, environ: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """The command in a clean environment, with `system_file` standing in for /etc's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_RUNNER_", "XDG_"))}
    return subprocess.run([sys.executable, "-c", SYSTEM_STAND_IN, str(system_file), *args],
                          cwd=folder, env=env | environ, capture_output=True, text=True,
                          timeout=60)


def test_config_names_each_settings_source_and_hides_the_password(tmp_path: Path) -> None:
    system = toml(tmp_path / "etc" / "config.toml", worker_id="lab-7",
                  database_url="postgresql://runner:s3cret@db.lab:5432/fusion")
    user = toml(tmp_path / "home" / ".config" / "fusion-runner" / "config.toml",
                runs_dir="/srv/runs")
    environ = {"HOME": str(tmp_path / "home"), "FUSION_RUNNER_LOG_LEVEL": "debug"}

    result = fusion_runner_with_system_config(
        system, tmp_path, environ, "--stop-grace-seconds", "3", "config", "--json")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config_file"] == str(user)  # the user's file comes before the system's
    settings = shown["settings"]
    assert settings["runs_dir"] == {"value": "/srv/runs", "source": str(user)}
    assert settings["log_level"] == {"value": "DEBUG", "source": "FUSION_RUNNER_LOG_LEVEL"}
    assert settings["stop_grace_seconds"] == {"value": 3.0, "source": "--stop-grace-seconds"}
    assert settings["worker_id"]["source"] == "default"  # the system file is not read at all
    user.unlink()
    result = fusion_runner_with_system_config(system, tmp_path, environ, "config")
    assert result.returncode == 0, result.stderr
    assert f"config file: {system}" in result.stdout
    assert "postgresql://runner:***@db.lab:5432/fusion" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    assert f"worker_id                  lab-7  ({system})" in result.stdout


def test_a_missing_database_names_its_path_and_where_the_setting_came_from(
    tmp_path: Path,
) -> None:
    system = toml(tmp_path / "etc" / "config.toml",
                  database_url=f"sqlite:///{tmp_path / 'gone' / 'runs.db'}")
    folder = tmp_path / "empty"
    folder.mkdir()
    environ = {"HOME": str(tmp_path / "home")}

    named = fusion_runner_with_system_config(system, folder, environ, "ls")
    ini = tmp_path / "run.ini"
    ini.write_text("[general_settings]\nerlang_start = 100\n")
    default = fusion_runner_with_system_config(tmp_path / "none.toml", folder, environ, "submit",
                                               str(ini))

    assert named.returncode == 1
    assert named.stderr.count("\n") == 1, named.stderr
    assert str(tmp_path / "gone" / "runs.db") in named.stderr
    assert f"database_url from {system}" in named.stderr
    assert "fusion-runner daemon" in named.stderr  # how to get one
    assert default.returncode == 1
    assert "data/gui_runs/runs.db does not exist" in default.stderr
    assert "the built-in default; no configuration file found" in default.stderr
    assert list(folder.iterdir()) == []
