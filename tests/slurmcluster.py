"""A real Slurm cluster for the tests marked `slurm`: one node, this host, one per session.

Debian's `munge` and `slurm-wlm`: munged with a key of its own, slurmctld and
slurmd (as root, in the foreground, children of this session) with a
generated `slurm.conf`, all in a temporary directory, on free ports. The
machine's own Slurm and MUNGE, if any, are never used or touched: clients find
this cluster through `SLURM_CONF` (in `SlurmCluster.env`), and the
configuration names this munged's socket. The node is this host with its real
CPUs (as `slurmd -C` reports them, each CPU one slot: `CR_CPU`) and slightly
less memory than it has. Where no cluster can run the tests are skipped,
except under CI=true, where they fail.

Settings a test can count on (see `slurm_conf`): partitions `debug` (default,
no time limit) and `tiny` (MaxTime one minute); `KillWait` 5 s between SIGTERM
and SIGKILL; a requeued job waits `REQUEUE_DELAY` seconds (AuthInfo's
cred_expire) before it may start again; jobs stay visible to `squeue -t all`
and `scontrol show job` for `MinJobAge` (300 s) after they end; no accounting
(`sacct` fails: "Slurm accounting storage is disabled").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import psutil
import pytest

from tests.conftest import wait_until

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0  # KillWait (5 s) and then some: a cancelled job's processes are gone
KILL_WAIT = 5
REQUEUE_DELAY = 10  # cred_expire: a requeued job is PENDING (BeginTime) this long, then starts
MIN_JOB_AGE = 300
CLUSTER_NAME = "fusiontest"
PARTITIONS = ("debug", "tiny")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
SEARCH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "RESIZING", "SIGNALING", "STAGE_OUT")
# squeue -O with `|` after each field: one line a job, split on `|` (Name last: it may hold one).
JOB_FIELDS = ("JobID", "State", "Reason", "NodeList", "RestartCnt", "Partition", "TimeLimit",
              "Name")


class Unavailable(Exception):
    """No Slurm cluster can run here."""


@dataclass
class Job:
    """One line of `squeue -t all`: Slurm's view of a job."""

    id: str
    state: str  # PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str  # why it waits (Resources, Priority, BeginTime, JobHeldUser, ...), else None
    node: str  # "" while pending
    restarts: int  # times it was requeued
    partition: str
    time_limit: str
    name: str


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    version: str
    partitions: tuple[str, ...] = PARTITIONS
    partition: str = PARTITIONS[0]  # the default one
    kill_wait: int = KILL_WAIT
    requeue_delay: int = REQUEUE_DELAY
    startup_seconds: float = 0.0  # from the first command to the node idle
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """What to merge into a subprocess's environment so that Slurm's clients find us."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def client_env(self) -> dict[str, str]:
        """This process's environment, without Slurm variables that would redirect clients
        (SBATCH_PARTITION, a SLURM_JOB_ID of a job pytest itself runs in), plus `env`."""
        return {key: value for key, value in os.environ.items()
                if not key.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SCANCEL_", "SALLOC_",
                                       "SRUN_", "SINFO_"))} | self.env

    # --- commands

    def run(self, *argv: str, check: bool = True, timeout: float = 30,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """A Slurm command (`run("scontrol", "requeue", job_id)`) against this cluster."""
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                input=input, env=self.client_env(),
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {result.returncode}\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def sbatch(self, *options: str, wrap: str | None = None, script: str | None = None) -> str:
        """Submit (`--parsable`) a `--wrap` command or a script given as text; the job id."""
        argv = ["sbatch", "--parsable", *options]
        if wrap is not None:
            argv += ["--wrap", wrap]
        out = self.run(*argv, input=script).stdout.strip()
        return out.split(";")[0]  # "id" or "id;cluster"

    def jobs(self, *job_ids: str) -> list[Job]:
        """Every job slurmctld still knows (`squeue -t all`), or those named; one call."""
        argv = ["squeue", "--noheader", "--states=all",
                "--Format=" + ",".join(f"{name}:|" for name in JOB_FIELDS)]
        if job_ids:
            argv.append("--jobs=" + ",".join(job_ids))
        result = self.run(*argv, check=False)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return []  # squeue -j fails for ids slurmctld forgot (MinJobAge)
            raise AssertionError(f"squeue: exit {result.returncode}\n{result.stderr}")
        jobs = []
        for line in result.stdout.splitlines():
            if not line.strip():
                continue
            job_id, state, reason, node, restarts, partition, limit, name = (
                line.split("|", len(JOB_FIELDS) - 1))
            jobs.append(Job(job_id.strip(), state.strip(), reason.strip(), node.strip(),
                            int(restarts or 0), partition.strip(), limit.strip(),
                            name.rstrip("|").strip()))
        return jobs

    def job(self, job_id: str) -> Job | None:
        found = [job for job in self.jobs(job_id) if job.id == job_id]
        return found[0] if found else None

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, ExitCode "0:9", Restarts,
        NodeList, BatchHost, StdOut, RunTime, ...); empty once slurmctld forgot the job."""
        result = self.run("scontrol", "--oneliner", "show", "job", job_id, check=False)
        if result.returncode != 0:
            return {}
        line = result.stdout.strip().splitlines()[0]
        # Values may hold ':' and '=' (AllocNode:Sid=host:42); a key starts after a space.
        pairs = re.split(r" (?=[A-Za-z][A-Za-z:/_]*=)", line)
        return dict(pair.partition("=")[::2] for pair in pairs)

    def wait_state(self, job_id: str, *states: str, timeout: float = 30.0) -> Job:
        """Poll until the job is in one of `states`; the job as then seen."""
        def reached() -> Job | None:
            job = self.job(job_id)
            return job if job is not None and job.state in states else None
        try:
            job = wait_until(reached, timeout, f"job {job_id} to reach {states}")
        except AssertionError as error:
            raise AssertionError(f"{error}; it is {self.job(job_id)}") from None
        assert job is not None
        return job

    def node_state(self) -> str:
        """The node's state as sinfo prints it: idle, mixed, allocated, completing, down, ..."""
        result = self.run("sinfo", "--noheader", "--nodes", self.node, "--format=%T",
                          check=False)
        return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""

    def active_jobs(self) -> list[Job]:
        return [job for job in self.jobs() if job.state in ACTIVE]

    def cancel_all(self) -> None:
        """scancel every job still pending or running (Slurm then SIGTERMs, and SIGKILLs
        after KillWait, what linuxproc tracks of each)."""
        ids = [job.id for job in self.active_jobs()]
        if ids:
            self.run("scancel", *ids, check=False)

    def wait_idle(self, timeout: float = IDLE_TIMEOUT) -> None:
        """Until no job is pending, running or completing and the node is idle."""
        try:
            wait_until(lambda: not self.active_jobs() and self.node_state() == "idle",
                       timeout, "the Slurm cluster to be idle")
        except AssertionError as error:
            raise AssertionError(f"{error}; jobs {self.active_jobs()}, "
                                 f"node {self.node_state()!r}") from None

    # --- logs and processes

    def log_text(self, daemon: str) -> str:
        log = self.root / "log" / f"{daemon}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {daemon}:\n{self.log_text(daemon)[-tail:]}" for daemon in DAEMONS)

    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        """Jobs cancelled; slurmd, slurmctld, munged stopped by pid (SIGTERM, then SIGKILL);
        a slurmstepd left behind (its cwd is our root) killed with its processes."""
        if not self.dead():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.cancel_all()
                self.wait_idle()
        for name in reversed(DAEMONS):
            if name in self.processes:
                terminate(self.processes[name])
        for leftover in strays(self.root):
            kill_tree(leftover)


def terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def strays(root: Path) -> list[psutil.Process]:
    """Processes whose working directory is our root: slurmstepds (slurmd's cwd) that
    outlived slurmd. Nothing else runs there."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.pid != os.getpid() and Path(process.cwd()).is_relative_to(root):
                found.append(process)
    return found


def kill_tree(process: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        for victim in [*process.children(recursive=True), process]:
            with contextlib.suppress(psutil.Error):
                victim.kill()
        psutil.wait_procs([process], timeout=STOP_TIMEOUT)


# --- starting the cluster -----------------------------------------------------------------------


def why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "slurmd must run as root"
    missing = [tool for tool in (*DAEMONS, *CLIENTS, "munge") if shutil.which(tool, path=SEARCH)
               is None]
    if missing:
        return f"not installed: {', '.join(missing)} (Debian's slurm-wlm and munge)"
    return None


def tool(name: str) -> str:
    """The daemons live in /usr/sbin, which a PATH may lack."""
    found = shutil.which(name, path=SEARCH)
    if found is None:
        raise Unavailable(f"{name} is not installed")
    return found


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Slurm tests cannot run under CI: {reason}")
    pytest.skip(f"Slurm unavailable: {reason}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env() -> dict[str, str]:
    # A machine-wide SLURM_CONF or a SLURM_JOB_ID must not reach our daemons.
    return {key: value for key, value in os.environ.items() if not key.startswith("SLURM")}


def node_hardware() -> tuple[str, int, int]:
    """`slurmd -C`: the node line's hardware words (sockets, cores, threads), CPUs, memory."""
    result = subprocess.run([tool("slurmd"), "-C"], capture_output=True, text=True, timeout=30,
                            env=clean_env(), stdin=subprocess.DEVNULL)
    line = next((line for line in result.stdout.splitlines() if line.startswith("NodeName=")),
                None)
    if line is None:
        raise Unavailable(f"slurmd -C printed no node line:\n{result.stdout}{result.stderr}")
    words = dict(word.partition("=")[::2] for word in line.split())
    cpus, memory = int(words.get("CPUs", 0)), int(words.get("RealMemory", 0))
    if cpus < 1 or memory < 1:
        raise Unavailable(f"slurmd -C: no CPUs or memory in {line!r}")
    hardware = " ".join(f"{key}={words[key]}" for key in
                        ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                        if key in words)
    return hardware, cpus, memory


def slurm_conf(root: Path, node: str, hardware: str, cpus: int, memory_mb: int,
               ctld_port: int, slurmd_port: int) -> str:
    munge_socket = root / "munge" / "munge.socket"
    return "\n".join([
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # socket: this session's munged; cred_expire: also the wait of a requeued job
        f"AuthInfo=socket={munge_socket},cred_expire={REQUEUE_DELAY}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        # Cgroups are not to be counted on in containers: processes are tracked by
        # parentage (/proc), each CPU a slot, nothing bound.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "JobRequeue=1",
        "EnforcePartLimits=ALL",  # a job beyond a partition's limits is refused by sbatch
        f"KillWait={KILL_WAIT}",
        f"MinJobAge={MIN_JOB_AGE}",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} {hardware} RealMemory={memory_mb} "
        "State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName=tiny Nodes={node} MaxTime=1 State=UP",
        "",
    ])


def spawn(root: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(root / "log" / f"{name}.log", "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=root, env=env,
                                start_new_session=True)


def start_munged(root: Path, cluster: SlurmCluster) -> None:
    munge = root / "munge"
    munge.mkdir(mode=0o755)  # munged wants its socket's folder searchable by all
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = munge / "munge.socket"
    cluster.processes["munged"] = spawn(root, "munged", [
        tool("munged"), "--foreground", f"--key-file={key}", f"--socket={sock}",
        f"--pid-file={munge / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.file.log'}",
        f"--seed-file={munge / 'munged.seed'}"], clean_env())

    def ready() -> bool:
        if cluster.dead():
            raise Unavailable(f"munged exited at start:\n{cluster.log_text('munged')}")
        return sock.exists() and subprocess.run(
            [tool("munge"), "--no-input", f"--socket={sock}"], capture_output=True,
            timeout=10).returncode == 0
    try:
        wait_until(ready, START_TIMEOUT, "munged to answer")
    except AssertionError as error:
        raise Unavailable(f"{error}:\n{cluster.log_text('munged')}") from None


def start_cluster() -> SlurmCluster:
    if reason := why_unavailable():
        raise Unavailable(reason)
    node = socket.gethostname().split(".")[0]
    hardware, cpus, memory = node_hardware()
    version = subprocess.run([tool("slurmctld"), "-V"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="fusion-runner-slurm-"))
    root.chmod(0o755)
    for folder in ("log", "state", "spool"):
        (root / folder).mkdir()
    conf = root / "slurm.conf"
    cluster = SlurmCluster(root, conf, node, cpus, memory * 95 // 100, version)
    try:
        start_munged(root, cluster)
        conf.write_text(slurm_conf(root, node, hardware, cpus, cluster.memory_mb,
                                   free_port(), free_port()))
        env = clean_env() | cluster.env
        # -D: in the foreground, so the pids we hold are the daemons'.
        cluster.processes["slurmctld"] = spawn(
            root, "slurmctld", [tool("slurmctld"), "-D", "-f", str(conf)], env)
        cluster.processes["slurmd"] = spawn(
            root, "slurmd", [tool("slurmd"), "-D", "-f", str(conf), "-N", node], env)

        def idle() -> bool:
            if dead := cluster.dead():
                raise Unavailable(f"{', '.join(dead)} exited at start:\n{cluster.logs()}")
            return cluster.node_state() == "idle"
        try:
            wait_until(idle, START_TIMEOUT, "the Slurm node to be idle")
        except AssertionError as error:
            raise Unavailable(f"{error} (it is {cluster.node_state()!r}):\n"
                              f"{cluster.logs()}") from None
        return cluster
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    started = time.monotonic()
    try:
        cluster = start_cluster()
    except Unavailable as why:
        skip_or_fail(str(why))
    cluster.startup_seconds = time.monotonic() - started
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster, idle at the start of the test and emptied after it."""
    slurm_cluster.wait_idle()
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.cancel_all()
        slurm_cluster.wait_idle()
