"""A restarted daemon knows its runs' processes by start ticks and boot id: it reads
an earlier version's database, and refuses to start rather than fail a run whose
live process it cannot see."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusion_runner.executors import procfs
from tests.conftest import Client, Daemon, alive, wait_until
from tests.legacy_schema import columns, downgrade_claims
from tests.systemd_sandbox import skip_or_fail

NEW_COLUMNS = ["process_start_ticks", "boot_id", "log_offset", "queued_at", "job_id", "node",
               "queue_reason", "stalled_at"]
NOBODY = 65534
# Run inside a new mount namespace: mount a /proc that hides other users'
# processes (what systemd's ProtectProc=invisible mounts), then become nobody.
ENTER_SANDBOX = (
    "import os, subprocess, sys\n"
    "subprocess.run(['mount', '-t', 'proc', '-o', 'hidepid=invisible', 'proc', '/proc'],"
    " check=True)\n"
    f"os.execvp('setpriv', ['setpriv', '--reuid={NOBODY}', '--regid={NOBODY}',"
    " '--clear-groups', *sys.argv[1:]])\n"
)
# A daemon whose /proc root is a folder that lists no process.
WITH_HIDDEN_PROC = (
    "import sys\n"
    "from pathlib import Path\n"
    "from fusion_runner.cli.main import main\n"
    "from fusion_runner.executors import procfs\n"
    "procfs.PROC_ROOT = Path(sys.argv[1])\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def start_a_run(daemon: Daemon, release: Path) -> tuple[str, int]:
    """A run that waits for `release`, left RUNNING by a daemon killed under it."""
    client = Client(daemon.database)
    run_id = client.submit({"sim": {"until": str(release)}})

    def spawned() -> int:
        row = client.row(run_id)
        return 0 if row is None or row["pid"] is None else int(row["pid"])  # 0: not yet

    pid = wait_until(spawned, 10, f"run {run_id} to start")
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait(10)
    return run_id, pid


def claim_identity(database: Path, run_id: str) -> tuple[int | None, str | None]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        found = connection.execute(
            "SELECT process_start_ticks, boot_id FROM fusion_runner_claims WHERE run_id = ?",
            (run_id,)).fetchone()
    return found[0], found[1]


def exit_status(daemon: Daemon) -> int:
    assert daemon.process is not None
    return daemon.process.wait(10)


def test_a_database_of_an_earlier_version_gets_the_new_columns_and_its_live_run_is_adopted(
    daemon_factory: Callable[..., Daemon], tmp_path: Path,
) -> None:
    daemon = daemon_factory().start()
    release = tmp_path / "release"
    run_id, pid = start_a_run(daemon, release)
    with contextlib.closing(sqlite3.connect(daemon.database)) as connection, connection:
        downgrade_claims(connection)
        assert not set(NEW_COLUMNS) & set(columns(connection, "fusion_runner_claims"))

    daemon.start()

    wait_until(lambda: f"run={run_id} action=adopted pid={pid}" in daemon.log_text(), 10,
               "the adoption")
    with contextlib.closing(sqlite3.connect(daemon.database)) as connection:
        assert columns(connection, "fusion_runner_claims")[-len(NEW_COLUMNS):] == NEW_COLUMNS
    # Adopted by its wall-clock start, then recorded by its ticks for later restarts.
    assert claim_identity(daemon.database, run_id) == (
        procfs.read_stat(pid).start_ticks, procfs.boot_id())
    release.touch()
    assert Client(daemon.database).wait_final(run_id)["status"] == "COMPLETED"


def test_a_daemon_whose_proc_root_hides_a_live_run_exits_2_and_leaves_it_running(
    daemon_factory: Callable[..., Daemon], tmp_path: Path,
) -> None:
    daemon = daemon_factory().start()
    release = tmp_path / "release"
    run_id, pid = start_a_run(daemon, release)
    hidden = tmp_path / "proc"
    hidden.mkdir()
    argv = daemon.argv()
    refusing = subprocess.run([sys.executable, "-c", WITH_HIDDEN_PROC, str(hidden), *argv[3:]],
                              capture_output=True, text=True, timeout=30, check=False)

    assert refusing.returncode == 2
    assert refusing.stderr.splitlines()[-1] == (
        f"fusion-runner: run {run_id}: process {pid} exists but cannot be inspected "
        f"({hidden}/{pid} is hidden: a sandbox such as systemd's ProtectProc=invisible with "
        f"PrivateUsers=yes hides processes of an earlier start); refusing to start, the run "
        f"stays RUNNING for a daemon that can see it")
    row = Client(daemon.database).row(run_id)
    assert row is not None and (row["status"], row["completed_at"]) == ("RUNNING", None)
    assert alive(pid)


# --- the real thing: a /proc that hides the run, as systemd's sandbox mounts it ---------


@dataclass
class SandboxedDaemon(Daemon):
    """A daemon run as nobody in a mount namespace whose /proc has hidepid=invisible."""

    def argv(self) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private",
                sys.executable, "-c", ENTER_SANDBOX, *super().argv()]


def sandbox_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a /proc with hidepid= in a mount namespace"
    if not (shutil.which("unshare") and shutil.which("setpriv") and shutil.which("mount")):
        return "needs unshare, setpriv and mount (util-linux)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         "mount", "-t", "proc", "-o", "hidepid=invisible", "proc", "/proc"],
        capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        return f"cannot mount a /proc with hidepid= here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A folder that nobody may write to as well (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="fusion-runner-sandbox-"))
    root.chmod(0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def open_to_everyone(database: Path) -> None:
    for path in database.parent.glob(f"{database.name}*"):
        path.chmod(0o666)


def test_a_daemon_that_cannot_see_a_live_run_refuses_to_start_and_leaves_it_running(
    shared_root: Path,
) -> None:
    if why := sandbox_unavailable():
        skip_or_fail(why)
    daemon, sandboxed = Daemon(shared_root), SandboxedDaemon(shared_root)
    release = shared_root / "release"
    try:
        run_id, pid = start_a_run(daemon.start(), release)
        open_to_everyone(daemon.database)

        sandboxed.start(wait_ready=False)

        assert exit_status(sandboxed) == 2
        assert (f"fusion-runner: run {run_id}: process {pid} exists but cannot be inspected "
                f"(/proc/{pid} is hidden: ") in sandboxed.log_text()
        client = Client(daemon.database)
        row = client.row(run_id)
        assert row is not None and (row["status"], row["completed_at"]) == ("RUNNING", None)
        assert alive(pid)
        # A daemon that can see it adopts it, and the run ends as it would have.
        daemon.start()
        wait_until(lambda: f"run={run_id} action=adopted" in daemon.log_text(), 10, "adoption")
        release.touch()
        assert client.wait_final(run_id)["status"] == "COMPLETED"
    finally:
        sandboxed.stop(signal.SIGKILL)
        daemon.cleanup()
