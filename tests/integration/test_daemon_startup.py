"""What the daemon refuses at start: bad configuration, a runs table it cannot serve."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_until


def daemon(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    return subprocess.run(
        [sys.executable, "-m", "fusion_runner", "daemon", *args],
        env=clean | (env or {}), cwd=cwd, capture_output=True, text=True, timeout=30,
        start_new_session=True,
    )


def test_an_unknown_environment_variable_is_a_warning_not_the_culprit(tmp_path: Path) -> None:
    result = daemon("--max-concurrent-runs", "-1", env={"FUSION_RUNNER_NO_SUCH_KEY": "1"},
                    cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("FUSION_RUNNER_NO_SUCH_KEY: unknown environment variable")
    assert "max_concurrent_runs" in lines[1]


@pytest.mark.parametrize(
    ("args", "env", "culprit"),
    [
        (["--max-concurrent-runs", "-1"], {}, "max_concurrent_runs"),
        (["--stop-grace-seconds", "soon"], {}, "stop_grace_seconds"),
        ([], {"FUSION_RUNNER_ON_SHUTDOWN": "explode"}, "on_shutdown"),
        (["--database-url", "mysql://x"], {}, "database_url"),
    ],
)
def test_bad_value_exits_2_naming_the_key(
    tmp_path: Path, args: list[str], env: dict[str, str], culprit: str
) -> None:
    result = daemon(*args, env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert culprit in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_bad_toml_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("max_concurrent_runs = [unclosed\n")

    result = daemon("--config", str(config), cwd=tmp_path)

    assert result.returncode == 2
    assert str(config) in result.stderr


def test_unknown_toml_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('max_concurent_runs = 2\n')

    result = daemon("--config", str(config), cwd=tmp_path)

    assert result.returncode == 2
    assert "max_concurent_runs" in result.stderr


def test_runs_table_missing_a_column_exits_2_naming_it(tmp_path: Path) -> None:
    database = tmp_path / "gui.db"
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TABLE runs (id VARCHAR(12) PRIMARY KEY, name VARCHAR(255), "
            "status VARCHAR(20) NOT NULL, config_json TEXT NOT NULL, "
            "template VARCHAR(100) NOT NULL, created_at DATETIME NOT NULL)"
        )

    result = daemon("--database-url", f"sqlite:///{database}", cwd=tmp_path)

    assert result.returncode == 2
    assert "'pid'" in result.stderr


def test_table_made_by_the_daemon_has_the_gui_schema(tmp_path: Path) -> None:
    from fusion_runner.core.store import Store

    database = tmp_path / "new.db"
    Store.open(f"sqlite:///{database}").close()

    with sqlite3.connect(database) as connection:
        table_info = connection.execute("PRAGMA table_info(runs)").fetchall()
        columns = {row[1]: (row[2], row[3]) for row in table_info}
        indexes = [row[1] for row in connection.execute("PRAGMA index_list(runs)")]
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert columns["id"] == ("VARCHAR(12)", 1)
    assert columns["status"] == ("VARCHAR(20)", 1)
    assert columns["config_json"] == ("TEXT", 1)
    assert columns["created_at"] == ("DATETIME", 1)
    assert columns["current_erlang"] == ("FLOAT", 0)
    assert columns["total_iterations"] == ("INTEGER", 0)
    assert len(columns) == 15
    assert any("status" in name for name in indexes)
    assert journal == "wal"


def test_under_journald_lines_carry_syslog_priorities(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """systemd sets JOURNAL_STREAM for a service whose stderr goes to the journal."""
    settings = tmp_path / "config.toml"
    settings.write_text('on_shutdown = "detach"\n')
    daemon = daemon_factory().start(
        extra_env={"JOURNAL_STREAM": "8:12345", "FUSION_RUNNER_CONFIG": str(settings)})
    assert daemon.process is not None
    settings.write_text('on_shutdown = "terminate"\n')
    daemon.process.send_signal(signal.SIGHUP)  # a warning to see: a change needing a restart
    wait_until(lambda: "action=reload_needs_restart" in daemon.log_text(), 10, "the warning")
    lines = daemon.log_text().splitlines()
    assert any(line.startswith("<6>action=ready ") for line in lines), lines
    assert any(line.startswith("<4>action=reload_needs_restart") for line in lines), lines
