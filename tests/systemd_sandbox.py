"""A real systemd for the tests marked `systemd`: the shipped unit, started and restarted for real.

`../shared/tools/systemd-sandbox` boots Debian's systemd as PID 1 of its own
PID namespace (its own /tmp and /run; the file system and the network are the
machine's). The checkout's unit is installed under a name of its own into the
sandbox's private `/run/systemd/system`, so an installed `fusion-runner.service`
is never touched, with `ExecStart` pointing at a venv built once per session
from the system interpreter outside /tmp and home folders, and run as the real
`fusion-runner` user. Where the sandbox cannot boot (not root, no unshare, no
systemd) the tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from fusion_runner.core import inifile
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = ROOT.parent / "shared" / "tools" / "systemd-sandbox"
UNIT_SOURCE = ROOT / "systemd" / "fusion-runner.service"
UNIT = "fusion-runner-test.service"
SERVICE_USER = "fusion-runner"
SYSTEM_PYTHON = "/usr/bin/python3"
VENV = Path("/opt/fusion-runner-test/venv")
STATE = Path("/var/lib/fusion-runner-test")
CONFIG_DIR = Path("/etc/fusion-runner-test")
DROPIN_DIR = f"/run/systemd/system/{UNIT}.d"
SHIPPED_EXEC = (
    "/opt/fusion-runner/.venv/bin/fusion-runner daemon --config /etc/fusion-runner/config.toml"
)
SYSTEMD_BINARIES = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")


class Unavailable(Exception):
    """No systemd sandbox can boot here."""


def sandbox(*argv: str, check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(["bash", str(SANDBOX), *argv], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"systemd-sandbox {' '.join(argv)}: {result.returncode}\n"
                             f"{result.stdout}{result.stderr}")
    return result.stdout


def inside(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    """Run a command inside the sandbox (its /run, its PID namespace)."""
    result = subprocess.run(["bash", str(SANDBOX), "run", *argv], capture_output=True,
                            text=True, timeout=60, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.returncode}\n"
                             f"{result.stdout}{result.stderr}")
    return result.stdout


def why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the systemd sandbox needs root"
    if not SANDBOX.exists():
        return f"{SANDBOX} is missing"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    if not any(Path(path).exists() for path in SYSTEMD_BINARIES):
        return "systemd is not installed"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"systemd tests cannot run under CI: {reason}")
    pytest.skip(reason)


# --- once per session: the sandbox, the service user, the service's venv -----------------------


@pytest.fixture(scope="session")
def systemd_sandbox() -> Iterator[None]:
    if reason := why_unavailable():
        skip_or_fail(reason)
    if Path(f"/etc/systemd/system/{UNIT}").exists():
        skip_or_fail(f"/etc/systemd/system/{UNIT} exists and would shadow the test's unit")
    was_running = subprocess.run(["bash", str(SANDBOX), "status"], capture_output=True,
                                 timeout=30).returncode == 0
    try:
        sandbox("start")
    except AssertionError as error:
        skip_or_fail(str(error))
    try:
        yield
    finally:
        if not was_running:
            sandbox("stop", check=False)


def ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        SERVICE_USER], check=True, timeout=60)
        return pwd.getpwnam(SERVICE_USER)


@pytest.fixture(scope="session")
def system_venv() -> Path:
    """The checkout installed (not editable) into a venv of the system interpreter,
    outside /tmp and home folders: for daemons that run as other users (the unit's
    ProtectHome hides /root and /home, where pyenv and conda live)."""
    if os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        skip_or_fail(f"a daemon as another user needs root and {SYSTEM_PYTHON}")
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(VENV)], check=True, timeout=120)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"{ROOT}[postgres]"],
                   check=True, timeout=600, capture_output=True)
    return VENV


@pytest.fixture(scope="session")
def service_venv(systemd_sandbox: None, system_venv: Path) -> Path:
    ensure_service_user()
    return system_venv


# --- per test: the unit, its configuration, the client ------------------------------------------


def unit_text() -> str:
    """The shipped unit with this test's paths; each substitution must have happened."""
    text = UNIT_SOURCE.read_text()
    for old, new in [
        (SHIPPED_EXEC, f"{VENV}/bin/fusion-runner daemon --config {CONFIG_DIR}/config.toml"),
        ("StateDirectory=fusion-runner\n", "StateDirectory=fusion-runner-test\n"),
        ("ReadWritePaths=/var/lib/fusion-runner\n", f"ReadWritePaths={STATE}\n"),
        ("WorkingDirectory=/var/lib/fusion-runner\n", f"WorkingDirectory={STATE}\n"),
        ("ConfigurationDirectory=fusion-runner\n", "ConfigurationDirectory=fusion-runner-test\n"),
    ]:
        assert text.count(old) == 1, f"the shipped unit no longer has {old!r}"
        text = text.replace(old, new)
    return text


def utc_text() -> str:
    return datetime.now(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def refsim_config(num_requests: int) -> str:
    """FUSION's minimal template, as the demo uses it, sized to run for a while."""
    source = resources.files("fusion_runner") / "data" / "fusion_minimal.ini"
    with resources.as_file(source) as path:
        config = inifile.read_ini(path)
    config["general_settings"] |= {"num_requests": num_requests, "max_iters": 3, "seed": 7,
                                   "erlang_start": 300, "erlang_stop": 500, "erlang_step": 100}
    return json.dumps(config)


@dataclass
class Service:
    """The test's unit in the sandbox, its state folder and a client of its database."""

    database_url: str = f"sqlite:///{STATE}/runs.db"
    journal_from: int = 0
    dropins: list[str] = field(default_factory=list)

    # --- systemd

    def install(self, settings: dict[str, object], dropin: str = "") -> None:
        CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        lines = [f"{key} = {json.dumps(value)}" for key, value in
                 ({"database_url": self.database_url, "runs_dir": f"{STATE}/runs"}
                  | settings).items()]
        (CONFIG_DIR / "config.toml").write_text("\n".join(lines) + "\n")
        inside("sh", "-c", f"cat > /run/systemd/system/{UNIT}", stdin=unit_text())
        inside("rm", "-rf", DROPIN_DIR)
        if dropin:
            inside("mkdir", "-p", DROPIN_DIR)
            inside("sh", "-c", f"cat > {DROPIN_DIR}/test.conf", stdin=dropin)
        inside("systemctl", "daemon-reload")
        self.journal_from = len(self.journal_lines(since_start=True))

    def systemctl(self, *argv: str, check: bool = True) -> str:
        return inside("systemctl", *argv, check=check)

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", UNIT).strip()

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def journal_lines(self, since_start: bool = False) -> list[str]:
        text = inside("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", check=False)
        lines = text.splitlines()
        return lines if since_start else lines[self.journal_from:]

    def journal(self, priority: str | None = None) -> str:
        """This test's journal lines; with `priority`, every line of the unit at least that
        urgent (`journalctl -p`), as an administrator filters them."""
        if priority is None:
            return "\n".join(self.journal_lines())
        return inside("journalctl", "-u", UNIT, "-p", priority, "--no-pager", "-o", "cat",
                      check=False)

    def cgroup_pids(self) -> list[int]:
        """Live (not zombie) processes of the service's cgroup, as host pids."""
        group = self.show("ControlGroup")
        if not group:
            return []
        for hierarchy in ("unified", "systemd", ""):
            procs = Path("/sys/fs/cgroup", hierarchy, group.lstrip("/"), "cgroup.procs")
            if procs.exists():
                return [pid for pid in map(int, procs.read_text().split()) if not zombie(pid)]
        return []

    def stop_everything(self) -> None:
        self.systemctl("kill", "--kill-whom=all", "-s", "KILL", UNIT, check=False)
        self.systemctl("stop", UNIT, check=False)
        self.systemctl("reset-failed", UNIT, check=False)
        wait_until(lambda: not self.cgroup_pids(), 15, "the service's cgroup to empty")

    # --- the runs table, as a client on this machine

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        # As the service user: a -wal or -shm file this client creates must stay
        # writable by the daemon (a root-owned one would make it read-only).
        # Nothing may be imported meanwhile: this interpreter may live in /root.
        account = pwd.getpwnam(SERVICE_USER)
        os.setegid(account.pw_gid)
        os.seteuid(account.pw_uid)
        try:
            connection = sqlite3.connect(STATE / "runs.db", timeout=10, isolation_level=None)
            connection.row_factory = sqlite3.Row
            try:
                yield connection
            finally:
                connection.close()
        finally:
            os.seteuid(0)
            os.setegid(0)

    def submit(self, num_requests: int) -> str:
        run_id, config_json = os.urandom(6).hex(), refsim_config(num_requests)
        with self.connect() as connection:
            connection.execute(
                "INSERT INTO runs (id, name, status, config_json, template, created_at) "
                "VALUES (?, 'systemd-test', 'PENDING', ?, 'fusion_minimal.ini', ?)",
                (run_id, config_json, utc_text()))
        return run_id

    def row(self, run_id: str) -> dict[str, Any]:
        with self.connect() as connection:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        assert row is not None, f"run {run_id} has no row"
        return dict(row)

    def cancel(self, run_id: str) -> None:
        with self.connect() as connection:
            connection.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = ?", (run_id,))


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


@pytest.fixture
def service(service_venv: Path) -> Iterator[Service]:
    unit = Service()
    unit.stop_everything()
    shutil.rmtree(STATE, ignore_errors=True)
    try:
        yield unit
    finally:
        unit.stop_everything()
        inside("rm", "-rf", DROPIN_DIR, check=False)
