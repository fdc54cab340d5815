"""The per-run shim on its own: a real process, a real simulation, a real status pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_runner.executors import local as process

PYTHON = sys.executable


def run_shim(run_dir: Path, record: Path, command: list[str]) -> tuple[int, dict[str, object]]:
    """The shim's return code (as Popen gives it) and the record it piped."""
    read_fd, write_fd = os.pipe()
    argv = [PYTHON, "-I", "-S", process.SHIM_PATH, "--run-dir", str(run_dir),
            "--record", str(record), "--grace", "1", "--status-fd", str(write_fd),
            "--", *command]
    try:
        shim = subprocess.Popen(argv, pass_fds=(write_fd,), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.close(write_fd)
    try:
        code = shim.wait(timeout=20)
        with os.fdopen(read_fd, "rb") as pipe:
            piped = pipe.read()
    except BaseException:
        shim.kill()
        shim.wait(5)
        raise
    return code, json.loads(piped)


def simulation(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def test_the_record_is_saved_and_piped_and_the_shim_exits_as_the_simulation(
    tmp_path: Path,
) -> None:
    record = tmp_path / "exit.json"
    code, piped = run_shim(tmp_path, record, simulation("raise SystemExit(3)"))
    assert code == 3
    saved = json.loads(record.read_text())
    assert saved["exit_code"] == piped["exit_code"] == 3
    assert "record_error" not in piped
    assert isinstance(piped["shim_pid"], int)


def test_a_simulation_killed_by_a_signal_kills_the_shim_by_the_same_signal(
    tmp_path: Path,
) -> None:
    command = simulation("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    code, piped = run_shim(tmp_path, tmp_path / "exit.json", command)
    assert code == -signal.SIGTERM
    assert piped["signal"] == signal.SIGTERM


@pytest.mark.parametrize("exit_code", [0, 5])
def test_a_record_that_cannot_be_saved_keeps_the_outcome_and_says_why(
    tmp_path: Path, exit_code: int
) -> None:
    record = tmp_path / "gone" / "exit.json"  # its folder does not exist
    code, piped = run_shim(tmp_path, record, simulation(f"raise SystemExit({exit_code})"))
    assert code == exit_code
    assert piped["exit_code"] == exit_code
    assert "No such file or directory" in str(piped["record_error"])
    assert list(tmp_path.iterdir()) == []  # no exit.json.tmp anywhere


def test_a_record_in_the_way_leaves_no_temporary_file(tmp_path: Path) -> None:
    record = tmp_path / "exit.json"
    (record / "occupied").mkdir(parents=True)
    code, piped = run_shim(tmp_path, record, simulation("pass"))
    assert code == 0 and "Is a directory" in str(piped["record_error"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exit.json"]


def test_the_simulation_does_not_hold_the_status_pipe(tmp_path: Path) -> None:
    listing = tmp_path / "fds"
    code_text = (
        "import os\nfds = os.listdir('/proc/self/fd')\n"
        f"open({str(listing)!r}, 'w').write(' '.join(fds))"
    )
    code, _piped = run_shim(tmp_path, tmp_path / "exit.json", simulation(code_text))
    assert code == 0
    # stdin, stdout, stderr and the descriptor listdir itself used: nothing of the shim's
    assert sorted(listing.read_text().split()) == ["0", "1", "2", "3"]
