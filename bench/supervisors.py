"""The two supervisors under test, each started as a process of its own on the bench's
database: fusion-runner's daemon and the baseline (bench/baseline.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.database import REPO, Target

SIM = Path(__file__).with_name("sim.py")
FUSION_RUNNER = "fusion-runner"
BASELINE = "baseline"
SYSTEMS = (FUSION_RUNNER, BASELINE)
# On PostgreSQL the daemon's fallback poll is 30 s, so that a wake-up that never
# comes shows as a slow sample instead of hiding under a 1 s poll, and its lease
# is an hour, so that no heartbeat falls in the idle windows.
POSTGRES_DAEMON_ARGS = ["--poll-interval-seconds", "30", "--lease-timeout-seconds", "3600"]
READY_TIMEOUT = 30.0


def fusion_runner_argv(target: Target, runs_dir: Path, slots: int) -> list[str]:
    argv = [sys.executable, "-m", "fusion_runner", "daemon",
            "--database-url", target.url, "--runs-dir", str(runs_dir),
            "--sim-command", f"{{python}} -S {SIM}", "--max-concurrent-runs", str(slots),
            # every bench run counts one core: admit by slots alone
            "--max-cores", str(max(slots, 1)),
            "--worker-id", "bench", "--stop-grace-seconds", "5"]
    return argv + (POSTGRES_DAEMON_ARGS if target.postgres else [])


def baseline_argv(target: Target, runs_dir: Path, slots: int) -> list[str]:
    return [sys.executable, "-m", "bench.baseline", "--database-url", target.url,
            "--runs-dir", str(runs_dir), "--sim", str(SIM),
            "--max-concurrent-runs", str(slots)]


class Supervisor:
    """One supervisor process, its log, and what it costs (CPU, memory)."""

    def __init__(self, system: str, target: Target, root: Path, slots: int,
                 profile: Path | None = None) -> None:
        self.system = system
        argv_for = fusion_runner_argv if system == FUSION_RUNNER else baseline_argv
        argv = argv_for(target, root / "runs", slots)
        if profile is not None:  # the same process under cProfile, its profile written at exit
            argv[1:1] = ["-m", "cProfile", "-o", str(profile)]
        self.log_path = root / f"{system}-{slots}-{os.urandom(2).hex()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=REPO, start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.psutil = psutil.Process(self.process.pid)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while b"action=ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.system} did not start:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self) -> str:
        return self.log_path.read_bytes()[-3000:].decode(errors="replace")

    def cpu_seconds(self) -> float:
        times = self.psutil.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.psutil.memory_info().rss) / 2**20

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
