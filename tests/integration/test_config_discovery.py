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
