"""A process's identity and the verdict on it: start ticks and boot id, the kernel's
word on whether it exists, and /proc's only on whether it is the same process.

Real processes throughout; "cannot tell" points the /proc root at a folder
where the pid's entry is missing while the kernel says the process exists.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fusion_runner.executors import procfs
from fusion_runner.executors.local import Identity, RunProcess, Verdict, find_shim, tree_gone

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll `condition` until it holds, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.01)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live session and group leader of ours, killed and reaped by pid at the end."""
    child = subprocess.Popen(SLEEPER, start_new_session=True)
    yield child
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)


@pytest.fixture
def hidden_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A /proc root that lists no process, as systemd's ProtectProc=invisible shows
    processes of an earlier start."""
    root = tmp_path / "proc"
    root.mkdir()
    monkeypatch.setattr(procfs, "PROC_ROOT", root)
    return root


def free_pid() -> int:
    """A pid the kernel has no process for (ESRCH), counted down from the top."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(top - 1, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid")


def own_identity() -> Identity:
    return Identity.read(os.getpid())


# --- reading /proc/PID/stat ---------------------------------------------------------


def test_ticks_of_this_process_come_from_field_22_of_its_stat() -> None:
    stat = procfs.read_stat(os.getpid())
    line = Path("/proc/self/stat").read_bytes()
    fields = line[line.rindex(b")") + 2:].split()

    assert stat.start_ticks == int(fields[19])
    assert (stat.pgrp, stat.session, stat.state) == (os.getpgrp(), os.getsid(0), "R")
    # Ticks since boot: no later than now on the boot clock.
    now_ticks = time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")
    assert 0 < stat.start_ticks <= now_ticks


def test_ticks_of_a_new_child_are_the_boot_clock_at_its_start(
    sleeper: subprocess.Popen[bytes],
) -> None:
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    now_ticks = time.clock_gettime(time.CLOCK_BOOTTIME) * ticks_per_second

    assert abs(procfs.read_stat(sleeper.pid).start_ticks - now_ticks) < 5 * ticks_per_second


def test_a_command_name_with_spaces_and_parentheses_is_skipped_whole() -> None:
    real = Path("/proc/self/stat").read_bytes()
    after_name = real[real.rindex(b")"):]
    # The name "a) b (S 1 2 3) 4": what a naive split would take for fields 3 to 7.
    tricky = b"%d (a) b (S 1 2 3) 4) " % os.getpid() + after_name[2:]

    assert procfs.parse_stat(tricky) == procfs.parse_stat(real)


def test_a_line_that_is_not_a_stat_line_is_refused() -> None:
    with pytest.raises(ValueError):
        procfs.parse_stat(b"12 (name) S 1 2")
    with pytest.raises(ValueError):
        procfs.parse_stat(b"no parenthesis at all")


def test_the_boot_id_is_the_kernels() -> None:
    assert procfs.boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# --- the verdicts on real processes --------------------------------------------------


def test_this_process_is_alive() -> None:
    assert own_identity().look().verdict is Verdict.ALIVE
    assert own_identity().is_alive() and not own_identity().is_reused()


def test_a_child_that_ended_and_was_reaped_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = Identity.read(child.pid)
    child.wait(10)

    assert identity.look().verdict is Verdict.GONE
    assert not identity.is_alive() and not identity.is_reused()


def test_a_zombie_is_gone(sleeper: subprocess.Popen[bytes]) -> None:
    identity = Identity.read(sleeper.pid)
    os.kill(sleeper.pid, signal.SIGKILL)
    wait_until(lambda: procfs.read_stat(sleeper.pid).state == "Z")

    assert identity.look().verdict is Verdict.GONE


def test_a_pid_the_kernel_does_not_know_is_gone() -> None:
    identity = Identity(free_pid(), 12345, procfs.boot_id())

    assert identity.look().verdict is Verdict.GONE


def test_a_process_of_another_boot_is_gone_and_its_group_is_not_ours() -> None:
    mine = own_identity()
    of_another_boot = Identity(mine.pid, mine.start_ticks, "00000000-0000-0000-0000-000000000000")

    assert of_another_boot.look().verdict is Verdict.GONE
    assert not of_another_boot.is_alive()
    assert of_another_boot.is_reused()  # a group of that number is a stranger's


def test_a_pid_with_other_start_ticks_is_reused() -> None:
    mine = own_identity()
    assert mine.start_ticks is not None
    earlier = Identity(mine.pid, mine.start_ticks - 1, mine.boot_id)

    assert earlier.look().verdict is Verdict.REUSED
    assert earlier.is_reused() and not earlier.is_alive()


def test_no_start_at_all_is_not_an_identity() -> None:
    with pytest.raises(ValueError):
        Identity(os.getpid(), None, None)


# --- the wall clock does not move an identity ------------------------------------------


def test_a_stepped_clock_changes_no_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = own_identity()
    stepped = psutil.boot_time() + 5.0
    # What psutil's create_time adds to the start ticks, re-read from /proc/stat's
    # btime on every call: it moves when the wall clock is stepped.
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: stepped)
    monkeypatch.setattr(psutil.Process, "create_time", _never_called)

    assert mine.look().verdict is Verdict.ALIVE
    assert mine.is_alive() and not mine.is_reused()


def test_a_row_of_an_earlier_version_is_still_compared_by_its_wall_clock_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = own_identity()
    legacy = Identity(mine.pid, None, None, mine.start_time)

    assert legacy.look().verdict is Verdict.ALIVE
    # The limitation of such rows, until adoption rewrites them with ticks.
    stepped = psutil.boot_time() + 5.0
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: stepped)
    assert legacy.look().verdict is Verdict.REUSED


def test_the_legacy_start_time_is_what_psutil_says() -> None:
    assert own_identity().start_time == psutil.Process(os.getpid()).create_time()


def _never_called(*args: object) -> float:
    raise AssertionError("psutil's create_time was called")


# --- "cannot tell": the process exists, /proc does not show it -------------------------


def test_a_live_process_hidden_from_proc_cannot_be_told(hidden_proc: Path) -> None:
    sight = own_identity_via_real_proc().look()

    assert sight.verdict is Verdict.CANNOT_TELL
    assert f"{hidden_proc}/{os.getpid()} is hidden" in sight.why
    assert "ProtectProc=invisible" in sight.why


def test_an_unreadable_stat_cannot_be_told(hidden_proc: Path) -> None:
    (hidden_proc / str(os.getpid()) / "stat").mkdir(parents=True)  # reading it fails

    sight = own_identity_via_real_proc().look()

    assert sight.verdict is Verdict.CANNOT_TELL
    assert "Is a directory" in sight.why


def test_an_ended_process_is_gone_however_proc_hides_it(hidden_proc: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    with pytest.MonkeyPatch.context() as visible:
        visible.setattr(procfs, "PROC_ROOT", Path("/proc"))
        identity = Identity.read(child.pid)
    child.wait(10)

    assert identity.look().verdict is Verdict.GONE


def test_during_supervision_cannot_tell_counts_as_alive_and_is_logged_once(
    hidden_proc: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    mine = own_identity_via_real_proc()
    with caplog.at_level(logging.WARNING, logger="fusion_runner"):
        assert mine.is_alive() and mine.is_alive()
        assert not mine.is_reused()

    warnings = [r.getMessage() for r in caplog.records if "action=uninspectable" in r.getMessage()]
    assert len(warnings) == 1
    assert f"pid={mine.pid}" in warnings[0] and "counted_as=alive" in warnings[0]


def test_a_tree_hidden_from_proc_is_not_gone_until_the_kernel_says_so(
    hidden_proc: Path, sleeper: subprocess.Popen[bytes],
) -> None:
    with pytest.MonkeyPatch.context() as visible:
        visible.setattr(procfs, "PROC_ROOT", Path("/proc"))
        run = RunProcess(Identity.read(sleeper.pid), pgid=sleeper.pid)

    assert not tree_gone(run)
    os.kill(sleeper.pid, signal.SIGKILL)
    sleeper.wait(10)
    assert tree_gone(run)


def own_identity_via_real_proc() -> Identity:
    """This process's identity read from the real /proc, whatever PROC_ROOT is now."""
    stat = procfs.parse_stat(Path("/proc/self/stat").read_bytes())
    return Identity(os.getpid(), stat.start_ticks, procfs.boot_id())


# --- finding the shim of a run whose spawn was never recorded ----------------------------


def test_a_session_leader_naming_the_run_in_its_environment_is_found() -> None:
    run_id = os.urandom(6).hex()
    child = subprocess.Popen(SLEEPER, env={"FUSION_RUN_ID": run_id}, start_new_session=True)
    try:
        wait_until(lambda: b"FUSION_RUN_ID" in Path(f"/proc/{child.pid}/environ").read_bytes())
        found = find_shim(run_id)
        assert found is not None and found.pid == child.pid
        assert found.start_ticks == procfs.read_stat(child.pid).start_ticks
        assert found.look().verdict is Verdict.ALIVE
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)


def test_a_shim_is_found_by_its_command_line_when_its_environment_says_nothing(
    tmp_path: Path,
) -> None:
    run_id = os.urandom(6).hex()
    argv = [*SLEEPER, "/x/fusion_runner/shim.py", "--run-dir", str(tmp_path / run_id)]
    child = subprocess.Popen(argv, env={}, start_new_session=True)
    try:
        wait_until(lambda: b"--run-dir" in Path(f"/proc/{child.pid}/cmdline").read_bytes())
        found = find_shim(run_id)
        assert found is not None and found.pid == child.pid
        assert find_shim(os.urandom(6).hex()) is None
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)


def test_a_proc_mounted_with_hidepid_may_hide_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mountinfo = tmp_path / "mountinfo"
    monkeypatch.setattr(procfs, "MOUNTINFO_FILE", mountinfo)
    mountinfo.write_text("22 27 0:21 / /proc rw,relatime - proc proc rw\n")
    assert procfs.hidden_processes() is None

    mountinfo.write_text("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
                         "98 80 0:50 / /proc rw,relatime - proc proc rw,hidepid=invisible\n")
    why = procfs.hidden_processes()
    assert why is not None and "hidepid=invisible" in why

    mountinfo.write_text("98 80 0:50 / /proc rw,relatime - proc proc rw,hidepid=0\n")
    assert procfs.hidden_processes() is None


def test_without_proc_stat_ticks_still_decide_and_a_legacy_row_cannot_be_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = own_identity()
    legacy = Identity(mine.pid, None, None, mine.start_time)

    def hidden() -> float:  # /proc/stat as systemd's ProcSubset=pid leaves it
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(psutil._pslinux, "boot_time", hidden)

    assert mine.look().verdict is Verdict.ALIVE
    assert Identity.read(mine.pid).start_time is None
    sight = legacy.look()
    assert sight.verdict is Verdict.CANNOT_TELL and "ProcSubset=pid" in sight.why
