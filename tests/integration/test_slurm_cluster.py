"""The session's single-node Slurm cluster (tests/slurmcluster.py) works as the executor needs.

Jobs are plain shell (`--wrap`), each waiting on a file the test creates, so
that what Slurm shows can be seen while it holds: queued, running on the node,
at most one job a CPU, requeued, cancelled. Nothing of fusion-runner runs here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until
from tests.slurmcluster import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.05; done"


def read_pids(folder: Path, *names: str) -> list[int] | None:
    """The pids the job wrote, once it wrote them all."""
    texts = [(folder / name).read_text().strip() if (folder / name).exists() else ""
             for name in names]
    return [int(text) for text in texts] if all(texts) else None


def test_a_submitted_job_is_queued_runs_on_the_node_and_completes(slurm: SlurmCluster,
                                                                   tmp_path: Path) -> None:
    # As the daemon will: its own environment plus the cluster's env, sbatch --parsable.
    argv = ["sbatch", "--parsable", "--job-name=fusion-test", f"--chdir={tmp_path}",
            "--output=logs/sim.log", "--open-mode=append",
            "--wrap", f"echo started; {WAIT_FOR_GO}; echo $SLURM_JOB_ID > out.txt"]
    (tmp_path / "logs").mkdir()
    submitted = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30,
                               env=os.environ | slurm.env)
    job_id = submitted.stdout.strip()
    assert job_id.isdigit()

    running = slurm.wait_state(job_id, "RUNNING")
    assert (running.node, running.name, running.partition) == (slurm.node, "fusion-test",
                                                               slurm.partition)
    assert [job.id for job in slurm.active_jobs()] == [job_id]
    log = tmp_path / "logs" / "sim.log"  # opened by slurmstepd a moment after RUNNING
    wait_until(lambda: log.exists() and "started" in log.read_text(), 30,
               "the job's output in logs/sim.log")

    (tmp_path / "go").touch()
    slurm.wait_state(job_id, "COMPLETED")
    assert (tmp_path / "out.txt").read_text().strip() == job_id
    shown = slurm.show_job(job_id)
    assert (shown["JobState"], shown["ExitCode"]) == ("COMPLETED", "0:0")
    assert shown["StdOut"] == str(tmp_path / "logs" / "sim.log")


def test_a_held_job_is_cancelled_in_the_queue_and_never_starts(slurm: SlurmCluster,
                                                               tmp_path: Path) -> None:
    job_id = slurm.sbatch("--hold", f"--chdir={tmp_path}", "--output=/dev/null",
                          wrap="touch started")
    queued = slurm.wait_state(job_id, "PENDING")
    assert queued.reason == "JobHeldUser"

    slurm.run("scancel", job_id)
    slurm.wait_state(job_id, "CANCELLED")
    assert slurm.show_job(job_id)["RunTime"] == "00:00:00"
    assert not (tmp_path / "started").exists()


def test_the_node_runs_at_most_one_single_cpu_job_a_cpu(slurm: SlurmCluster,
                                                        tmp_path: Path) -> None:
    (tmp_path / "running").mkdir()
    (tmp_path / "seen").mkdir()
    # Each job notes how many were running when it started, then waits for `go`.
    script = ("touch running/$SLURM_JOB_ID; ls running | wc -l > seen/$SLURM_JOB_ID; "
              f"{WAIT_FOR_GO}; rm running/$SLURM_JOB_ID")
    ids = [slurm.sbatch("--cpus-per-task=1", f"--chdir={tmp_path}", "--output=/dev/null",
                        wrap=script) for _ in range(slurm.cpus + 2)]

    def full() -> bool:
        # squeue says RUNNING a moment before the script runs: both must agree.
        jobs = slurm.jobs(*ids)
        return (sum(job.state == "RUNNING" for job in jobs) == slurm.cpus
                and sum(job.state == "PENDING" for job in jobs) == 2
                and len(list((tmp_path / "running").iterdir())) == slurm.cpus)
    wait_until(full, 30, f"{slurm.cpus} jobs running and 2 waiting")
    waiting = [job for job in slurm.jobs(*ids) if job.state == "PENDING"]
    assert {job.reason for job in waiting} <= {"Resources", "Priority"}
    assert all(job.node == "" for job in waiting)

    (tmp_path / "go").touch()
    wait_until(lambda: all(job.state == "COMPLETED" for job in slurm.jobs(*ids)), 60,
               "every job to complete")
    seen = [int((tmp_path / "seen" / job_id).read_text()) for job_id in ids]
    assert max(seen) <= slurm.cpus


def test_scancel_of_a_running_job_kills_its_processes_even_in_a_session_of_their_own(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    # The batch shell ignores SIGTERM: only KillWait's SIGKILL ends it. Its child is in
    # a session (and process group) of its own: linuxproc finds it by parentage.
    job_id = slurm.sbatch(f"--chdir={tmp_path}", "--output=job.log",
                          wrap="trap '' TERM; setsid sleep 600 & echo $! > child.pid; "
                               f"echo $$ > shell.pid; {WAIT_FOR_GO}")
    slurm.wait_state(job_id, "RUNNING")
    pids = wait_until(lambda: read_pids(tmp_path, "child.pid", "shell.pid"), 30,
                      "the job's pids")
    assert pids is not None
    child, shell = pids
    assert os.getsid(child) != os.getsid(shell)

    slurm.run("scancel", job_id)
    slurm.wait_state(job_id, "CANCELLED", timeout=slurm.kill_wait + 30)
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                               != psutil.STATUS_ZOMBIE for pid in pids),
               slurm.kill_wait + 30, "the job's processes to be gone")


def test_scontrol_requeue_puts_a_running_job_back_in_the_queue_and_it_runs_again(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    # The first attempt waits for `go` (never created); the second ends at once.
    script = ('echo "attempt ${SLURM_RESTART_COUNT:-0}" >> attempts; '
              f'if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then {WAIT_FOR_GO}; fi')
    job_id = slurm.sbatch("--requeue", f"--chdir={tmp_path}", "--output=job.log",
                          "--open-mode=append", wrap=script)
    slurm.wait_state(job_id, "RUNNING")
    attempts = tmp_path / "attempts"
    wait_until(lambda: attempts.exists() and attempts.read_text() == "attempt 0\n", 30,
               "the first attempt")

    slurm.run("scontrol", "requeue", job_id)
    queued = slurm.wait_state(job_id, "PENDING")
    assert queued.restarts == 1
    assert queued.reason == "BeginTime"  # for requeue_delay seconds

    done = slurm.wait_state(job_id, "COMPLETED", timeout=slurm.requeue_delay + 30)
    assert done.restarts == 1
    assert attempts.read_text() == "attempt 0\nattempt 1\n"
    assert "DUE TO JOB REQUEUE" in (tmp_path / "job.log").read_text()
