"""`fusion-runner completion bash|zsh|fish`: scripts a shell accepts, and answers it can use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_runner.core.store import Store

SHELLS = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}


def fusion_runner(*args: str, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusion_runner", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_each_shells_script_is_valid_in_that_shell(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{shell} is not installed (.ci/run installs it)")
        pytest.skip(f"{shell} is not installed")
    result = fusion_runner("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "fusion-runner" in result.stdout
    script = tmp_path / f"fusion-runner.{shell}"
    script.write_text(result.stdout)
    checked = subprocess.run([*SHELLS[shell], str(script)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr


def complete(line: str, tmp_path: Path, **environ: str) -> list[str]:
    """What the program answers a shell completing `line` (argcomplete's protocol)."""
    answer = tmp_path / "answer"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    env |= {"_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "bash", "COMP_LINE": line,
            "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
            "HOME": str(tmp_path)} | environ
    result = subprocess.run([sys.executable, "-m", "fusion_runner"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # a completion writes nothing into the user's command line
    return answer.read_text().split("\x0b") if answer.read_text() else []


def test_commands_flags_and_run_ids_complete(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    store = Store.open(f"sqlite:///{database}")
    for run_id in ("abcd00000001", "abcd00000002", "ffff00000003"):
        store.insert_run(run_id, name="r", config_json="{}", template="t")
    store.close()
    url = f"sqlite:///{database}"

    assert [word.strip() for word in complete("fusion-runner lo", tmp_path)] == ["logs"]
    assert "--database-url" in [w.strip() for w in complete("fusion-runner ls --data", tmp_path)]
    ids = complete("fusion-runner show ab", tmp_path, FUSION_RUNNER_DATABASE_URL=url)
    assert sorted(word.strip() for word in ids) == ["abcd00000001", "abcd00000002"]
    flag_ids = complete(f"fusion-runner cancel --database-url {url} ff", tmp_path)
    assert [word.strip() for word in flag_ids] == ["ffff00000003"]
    # No database at the default path: no ids and no error, and none is created.
    assert complete("fusion-runner show ab", tmp_path) == []
    assert not (tmp_path / "data").exists()
