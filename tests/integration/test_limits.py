"""Limits of the machine: a full file system, inotify out of watches, a locked database.

Each test makes the limit real (a small tmpfs, the kernel's inotify limits, a
client's SQLite lock) around a real daemon, and checks what a user would: every
run ends with a status saying why, the daemon survives, and work goes on once the
limit is lifted.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Client, Daemon, alive, pids_of_run, wait_until


def require(possible: bool, reason: str) -> None:
    """Skip a test that cannot run here, with why; in CI, fail instead."""
    if possible:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot run in CI: {reason}")
    pytest.skip(reason)


def assert_alive(daemon: Daemon) -> None:
    assert daemon.process is not None
    assert daemon.process.poll() is None, daemon.log_text()[-3000:]


def no_process_left(daemon: Daemon, run_id: str) -> bool:
    return not any(alive(pid) for pid in pids_of_run(daemon.run_dir(run_id)))


# --- inotify out of watches -----------------------------------------------------------------

# Preferably the per-user inotify limits of a user namespace of the daemon's own: the
# kernel checks them as well as the machine's, so the daemon meets the limit while every
# other process keeps its watches. Else, as root, the machine's own limits
# (fs.inotify.max_user_*), lowered for the test's few seconds and restored.
NAMESPACE_LIMITS = "/proc/sys/user"
MACHINE_LIMITS = {"max_inotify_watches": "/proc/sys/fs/inotify/max_user_watches",
                  "max_inotify_instances": "/proc/sys/fs/inotify/max_user_instances"}


@dataclass
class LimitedDaemon(Daemon):
    """A daemon in a user namespace of its own (root mapped to root) with these limits."""

    limits: dict[str, int] = field(default_factory=dict)

    def argv(self) -> list[str]:
        writes = "".join(f"echo {value} > {NAMESPACE_LIMITS}/{name} && "
                         for name, value in self.limits.items())
        return ["unshare", "--user", "--map-root-user", "sh", "-c", writes + 'exec "$@"',
                "sh", *super().argv()]


def namespace_limits_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "sh", "-c",
             f"echo 0 > {NAMESPACE_LIMITS}/max_inotify_watches"]
    return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


@pytest.fixture
def limited_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """make(**limits): a started daemon that meets these inotify limits."""
    in_namespace = namespace_limits_work()
    require(in_namespace or all(os.access(path, os.W_OK) for path in MACHINE_LIMITS.values()),
            "cannot lower inotify limits: no user namespace (unshare --user), not root")
    made: list[Daemon] = []
    restore: dict[str, str] = {}

    def make(**limits: int) -> Daemon:
        settings = {"max-concurrent-runs": "2"}
        if in_namespace:
            daemon: Daemon = LimitedDaemon(tmp_path, settings, limits=limits)
        else:
            daemon = Daemon(tmp_path, settings)
            for name, value in limits.items():
                path = MACHINE_LIMITS[name]
                restore.setdefault(path, Path(path).read_text())
                Path(path).write_text(f"{value}\n")
        made.append(daemon)
        return daemon.start()

    try:
        yield make
    finally:
        for path, value in restore.items():
            Path(path).write_text(value)
        for daemon in made:
            daemon.cleanup()


@pytest.mark.parametrize("limit", ["max_inotify_watches", "max_inotify_instances"])
def test_without_inotify_runs_start_report_progress_and_end_by_polling(
    limited_daemon: Callable[..., Daemon], tmp_path: Path, limit: str
) -> None:
    daemon = limited_daemon(**{limit: 0})
    client = Client(daemon.database)
    gate = tmp_path / "gate"
    first = {"type": "iteration", "erlang": 300.0, "iteration": 1, "total_iterations": 3}
    last = {"type": "iteration", "erlang": 300.0, "iteration": 3, "total_iterations": 3}
    runs = [client.submit({"sim": {"progress": json.dumps([first]), "until": str(gate),
                                   "after": json.dumps([last]), "exit": code}})
            for code in (0, 4, 0)]
    # Started, and their progress seen, without a wake-up from inotify.
    for run_id in runs[:2]:
        wait_until(lambda run_id=run_id: (row := client.row(run_id)) is not None
                   and row["current_iteration"] == 1, 15, f"run {run_id}'s first progress")
    gate.touch()
    rows = [client.wait_final(run_id, timeout=30) for run_id in runs]
    assert [row["status"] for row in rows] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert "exit code 4" in rows[1]["error_message"]
    assert all(row["current_iteration"] == 3 for row in rows)
    assert all(no_process_left(daemon, run_id) for run_id in runs)
    assert_alive(daemon)
    assert "action=inotify_unavailable" in daemon.log_text()


def test_inotify_out_of_watches_is_one_warning(
    limited_daemon: Callable[..., Daemon],
) -> None:
    daemon = limited_daemon(max_inotify_watches=0)
    client = Client(daemon.database)
    for run_id in [client.submit({"sim": {}}) for _ in range(3)]:
        assert client.wait_final(run_id)["status"] == "COMPLETED"
    warnings = [line for line in daemon.log_text().splitlines()
                if "action=inotify_unavailable" in line]
    assert len(warnings) == 1, warnings




# --- runs_dir on a file system that fills ---------------------------------------------------

PAGE = 4096


@pytest.fixture
def small_runs_dir(tmp_path: Path) -> Iterator[Path]:
    """runs_dir on a 2 MiB tmpfs of its own (as root), unmounted afterwards."""
    require(os.geteuid() == 0, "mounting a small file system needs root")
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs",
                              str(runs_dir)], capture_output=True, text=True, timeout=30)
    require(mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield runs_dir
    finally:
        # Lazily: a process of a failed test may still hold a file there.
        subprocess.run(["umount", "--lazy", str(runs_dir)], check=True, timeout=30)


def fill(folder: Path) -> None:
    """Fill folder's file system with a new file until a write fails for want of space."""
    filler = folder / f"filler-{len(list(folder.glob('filler-*')))}"
    with open(filler, "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"x" * PAGE)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def free(folder: Path, size: int) -> None:
    """Free `size` bytes of what the first filler took."""
    filler = folder / "filler-0"
    os.truncate(filler, filler.stat().st_size - size)


@pytest.mark.timeout(120)
def test_a_full_runs_dir_fails_the_runs_that_cannot_start_and_work_resumes_once_freed(
    small_runs_dir: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    # small_runs_dir first: set up before the daemon, unmounted after its cleanup.
    daemon = daemon_factory(max_concurrent_runs="2").start()
    assert daemon.runs_dir == small_runs_dir
    client = Client(daemon.database)
    assert client.wait_final(client.submit({"sim": {}}))["status"] == "COMPLETED"

    fill(small_runs_dir)
    full = [client.submit({"sim": {}}) for _ in range(3)]
    for run_id in full:
        row = client.wait_final(run_id)
        assert row["status"] == "FAILED"
        message = row["error_message"]
        assert message == (f"[Errno 28] cannot write {small_runs_dir / run_id / 'config.ini'}: "
                           "No space left on device"), message
        assert row["pid"] is None
    assert_alive(daemon)

    # Nearly full: whatever of the run still fits, each run ends with a status, and
    # leaves no process behind.
    for pages in (1, 2, 4, 8):
        fill(small_runs_dir)
        free(small_runs_dir, pages * PAGE)
        run_id = client.submit({"sim": {"stdout": "x" * 3 * PAGE}})
        row = client.wait_final(run_id, timeout=30)
        # Refused before its spawn, or the simulation's own exit code (it could not
        # write its output), never a lost outcome.
        assert row["status"] == "COMPLETED" or (
            "No space left on device" in row["error_message"]
            and (row["pid"] is None or row["error_message"].startswith("exit code"))
        ), dict(row)
        assert wait_until(lambda run_id=run_id: no_process_left(daemon, run_id), 10,
                          "no process of the run left")
    assert_alive(daemon)

    for filler in small_runs_dir.glob("filler-*"):
        filler.unlink()
    again = [client.submit({"sim": {"progress": json.dumps([{"erlang": 5.0}])}})
             for _ in range(3)]
    for run_id in again:
        row = client.wait_final(run_id)
        assert row["status"] == "COMPLETED", row["error_message"]
        assert row["current_erlang"] == 5.0
    assert_alive(daemon)
    assert "Traceback" not in daemon.log_text()
