"""Where settings go on the command line, and what each command's --help lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fusion_runner.core.config import CLIENT_KEYS, KEYS
from fusion_runner.core.store import Store

DAEMON_ONLY = [key for key in KEYS if key not in CLIENT_KEYS]


def fusion_runner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    return subprocess.run([sys.executable, "-m", "fusion_runner", *args], capture_output=True,
                          text=True, timeout=60, env=env | {"HOME": str(cwd)}, cwd=cwd)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def test_settings_work_before_or_after_the_command(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    store = Store.open(f"sqlite:///{database}")
    store.insert_run("abcdef012345", name="r", config_json="{}", template="t")
    store.close()
    url = f"sqlite:///{database}"

    before = fusion_runner("--database-url", url, "ls", "--json", cwd=tmp_path)
    after = fusion_runner("ls", "--json", "--database-url", url, cwd=tmp_path)
    daemon_setting = fusion_runner("--worker-id", "early", "config", "--json", cwd=tmp_path)

    for result in (before, after, daemon_setting):
        assert result.returncode == 0, result.stderr
    assert [row["id"] for row in json.loads(before.stdout)] == ["abcdef012345"]
    assert before.stdout == after.stdout
    assert json.loads(daemon_setting.stdout)["settings"]["worker_id"]["value"] == "early"


def test_a_client_commands_help_lists_only_what_a_client_needs(tmp_path: Path) -> None:
    for command in ("ls", "show", "logs", "cancel", "watch", "submit"):
        text = fusion_runner(command, "--help", cwd=tmp_path).stdout
        assert "--config" in text and "--database-url" in text and "--runs-dir" in text, command
        assert not [key for key in DAEMON_ONLY if flag(key) in text], command
    daemon_help = fusion_runner("daemon", "--help", cwd=tmp_path).stdout
    assert all(flag(key) in daemon_help for key in KEYS)
    top_help = fusion_runner("--help", cwd=tmp_path).stdout
    assert "--database-url" in top_help and "--max-concurrent-runs" not in top_help
