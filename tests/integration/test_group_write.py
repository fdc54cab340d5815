"""One database and one runs directory shared by the daemon's user and a GUI's user.

Real users and a real group (made by the test as root), the daemon started as
its own user with the unit's umask (0027), the GUI's user writing to the same
SQLite file: what `group_write = true` promises (SPEC §8), and what happens
without it.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SIM, alive, pids_of_run, wait_until

GROUP = "frshare"
DAEMON_USER = "frdaemon"
GUI_USER = "frgui"
# A client's code, run as the GUI's user: SQL on the shared file, as the GUI does.
CLIENT = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
connection.execute(sys.argv[2], tuple(sys.argv[3:]))
"""


def ensure_accounts() -> None:
    if not _exists(grp.getgrnam, GROUP):
        subprocess.run(["groupadd", "--system", GROUP], check=True, timeout=30)
    for user, groups in ((DAEMON_USER, ["--gid", GROUP]), (GUI_USER, ["--groups", GROUP])):
        if not _exists(pwd.getpwnam, user):
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                            "/nonexistent", "--shell", "/usr/sbin/nologin", *groups, user],
                           check=True, timeout=30)


def _exists(lookup: object, name: str) -> bool:
    try:
        lookup(name)  # type: ignore[operator]
    except KeyError:
        return False
    return True


@dataclass
class Shared:
    """A folder like /var/lib/fusion-runner: the daemon's, its database and runs inside."""

    root: Path
    python: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def database(self) -> Path:
        return self.root / "runs.db"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def log(self) -> Path:
        return self.root.parent / f"{self.root.name}.daemon.log"

    def start_daemon(self, group_write: bool) -> None:
        code = ("import os, sys; os.umask(0o027); from fusion_runner.cli.main import main; "
                "sys.exit(main(sys.argv[1:]))")
        account = pwd.getpwnam(DAEMON_USER)
        argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                "--init-groups", "--", str(self.python), "-c", code, "daemon",
                "--database-url", f"sqlite:///{self.database}", "--runs-dir", str(self.runs_dir),
                "--sim-command", f"{{python}} {self.root / 'sim.py'}",
                "--group-write", "true" if group_write else "false",
                "--max-concurrent-runs", "2", "--stop-grace-seconds", "1",
                "--poll-interval-seconds", "0.5", "--worker-id", "shared"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: "action=ready" in self.log_text(), 20, "the daemon to be ready")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def as_gui(self, sql: str, *parameters: str) -> subprocess.CompletedProcess[str]:
        account = pwd.getpwnam(GUI_USER)
        argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                "--init-groups", "--", str(self.python), "-c", CLIENT, str(self.database),
                sql, *parameters]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def gui_submits(self, run_id: str, sim: dict[str, object]) -> None:
        result = self.as_gui(
            "INSERT INTO runs (id, name, status, config_json, template, created_at) "
            "VALUES (?, 'gui', 'PENDING', ?, 'minimal', strftime('%Y-%m-%d %H:%M:%f','now'))",
            run_id, json.dumps({"sim": sim}))
        assert result.returncode == 0, result.stderr

    def gui_makes_run_folder(self, run_id: str, mode: int) -> Path:
        """The GUI's way: the folder, logs/, output/ and its own config.ini."""
        folder = self.runs_dir / run_id
        account = pwd.getpwnam(GUI_USER)
        code = (f"import os; os.umask(0o022); d = {str(folder)!r}\n"
                f"for sub in ('', 'logs', 'output'):\n"
                f"    os.mkdir(os.path.join(d, sub)); os.chmod(os.path.join(d, sub), {mode})\n"
                f"open(os.path.join(d, 'config.ini'), 'w').write('[sim]\\n')")
        subprocess.run(["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                        "--init-groups", "--", str(self.python), "-c", code],
                       check=True, timeout=30)
        return folder

    def row(self, run_id: str) -> sqlite3.Row:
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        connection.row_factory = sqlite3.Row
        try:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        finally:
            connection.close()
        assert row is not None
        return row

    def final(self, run_id: str) -> sqlite3.Row:
        return wait_until(lambda: (row := self.row(run_id))["completed_at"] is not None and row,
                          20, f"run {run_id} to end")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.runs_dir.exists():
            for run_dir in self.runs_dir.iterdir():
                for pid in pids_of_run(run_dir):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def shared(system_venv: Path) -> Iterator[Shared]:
    ensure_accounts()
    root = Path("/var/tmp") / f"fusion-runner-shared-{secrets.token_hex(4)}"
    root.mkdir(mode=0o750)
    shutil.chown(root, DAEMON_USER, GROUP)
    shutil.copy(SIM, root / "sim.py")  # readable by the daemon's user wherever the checkout is
    (root / "sim.py").chmod(0o644)
    folder = Shared(root, system_venv / "bin" / "python")
    try:
        yield folder
    finally:
        folder.stop()
        shutil.rmtree(root, ignore_errors=True)
        folder.log.unlink(missing_ok=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_group_write_shares_the_database_and_the_runs_with_the_gui_user(shared: Shared) -> None:
    shared.start_daemon(group_write=True)
    assert "action=group_write group=frshare" in shared.log_text()
    for name in ("runs.db", "runs.db-wal", "runs.db-shm"):
        assert mode(shared.root / name) == 0o660, name
    assert mode(shared.runs_dir) == 0o2770 and mode(shared.root) == 0o2770

    # The GUI's user queues a run and cancels it through the shared file.
    cancelled = secrets.token_hex(6)
    shared.gui_submits(cancelled, {"workers": 2, "sleep": "forever"})
    wait_until(lambda: len(pids_of_run(shared.runs_dir / cancelled)) >= 3, 20, "the run")
    result = shared.as_gui("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", cancelled)
    assert result.returncode == 0, result.stderr
    assert shared.final(cancelled)["status"] == "CANCELLED"
    assert not any(alive(pid) for pid in pids_of_run(shared.runs_dir / cancelled))
    run_dir = shared.runs_dir / cancelled
    assert mode(run_dir) == 0o2770 and mode(run_dir / "config.ini") == 0o660
    assert mode(run_dir / "logs" / "sim.log") == 0o660
    assert mode(run_dir / "output" / "seen.json") == 0o660  # made by the simulation itself

    # A run folder the GUI made, writable by the group, is used as it is.
    gui_folder = secrets.token_hex(6)
    shared.gui_makes_run_folder(gui_folder, 0o2770)
    shared.gui_submits(gui_folder, {})
    row = shared.final(gui_folder)
    assert row["status"] == "COMPLETED", row["error_message"]
    assert (shared.runs_dir / gui_folder / "output" / "seen.json").exists()

    # One the group may not write: FAILED, naming the folder and the missing access.
    closed = secrets.token_hex(6)
    folder = shared.gui_makes_run_folder(closed, 0o755)
    shared.gui_submits(closed, {})
    row = shared.final(closed)
    assert row["status"] == "FAILED"
    assert str(folder) in row["error_message"] and "may not create files" in row["error_message"]


def test_without_group_write_the_gui_user_cannot_write_the_database(shared: Shared) -> None:
    shared.start_daemon(group_write=False)
    assert mode(shared.root / "runs.db") == 0o640
    result = shared.as_gui("UPDATE runs SET status = 'CANCELLED' WHERE id = 'x'")
    assert result.returncode != 0 and "readonly database" in result.stderr
