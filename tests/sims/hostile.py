"""A simulation that misbehaves as its config.ini [hostile] section says.

Keys (one behaviour per run; `exit` is the code it ends with, default 0):
- close_std = True: closes its stdin, stdout and stderr, then writes its progress.
- stdout_bytes = N: writes N bytes of numbered lines to stdout in 1 MiB writes, then
  `last line` (and `stderr_last`, if given, to stderr). With `cap = C`, whenever its
  log (its stdout) is past C it waits, at most WAIT_SECONDS, for the runner to cut
  it, and exits 9 if no cut came; so the test may count what was kept and dropped.
  The largest size it saw and the bytes it wrote go to `{pid_file}.log.json`.
- children = N: forks N children that sleep, waits until they all exist, then ends.
- regroup = True: moves itself to a session of its own (setsid) and forks a child
  that moves to a process group of its own (setpgid), then sleeps until stopped.
- term_forks = N: ignores SIGTERM, forking a child (which does the same) on each
  one, at most N forks per process; sleeps until killed.
- delete_run_dir = True: deletes its run directory, then ends.
- progress_gib = N: writes a valid progress record, then N GiB without a newline
  (a sparse extension of progress.jsonl: no disk is used), then a newline and a
  second valid record.

Every pid it creates is appended to `pid_file` (an absolute path outside the run
directory, which it may delete) and to {run_dir}/pids: tests check that none is
left and clean up by pid.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

CHUNK = 1 << 20
WAIT_SECONDS = 30.0
GIB = 1 << 30


def record_pid(settings: Mapping[str, str], pid: int) -> None:
    places = [os.path.join(os.environ["FUSION_RUN_DIR"], "pids"), settings.get("pid_file")]
    for place in places:
        if place:
            with contextlib.suppress(OSError), open(place, "a") as pids:
                pids.write(f"{pid}\n")


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def fork_sleeper(settings: Mapping[str, str], before_sleep: object = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            record_pid(settings, os.getpid())
            if callable(before_sleep):
                before_sleep()
            sleep_forever()
        finally:
            os._exit(0)
    return pid


def close_std() -> None:
    for fd in (0, 1, 2):
        os.close(fd)


def chatty(settings: Mapping[str, str]) -> int:
    """Numbered lines to stdout; past `cap`, waits for the runner to cut the log."""
    total, cap = int(settings["stdout_bytes"]), int(settings.get("cap", "0"))
    largest, number, written = 0, 0, 0
    while written < total:
        data = b"".join(b"line %09d %s\n" % (n, b"x" * 48) for n in range(number, number + 16384))
        number += 16384
        written += os.write(1, data)
        largest = max(largest, os.fstat(1).st_size)
        if cap and not cut_within(cap, WAIT_SECONDS):
            return 9
    written += os.write(1, b"last line\n")
    if "stderr_last" in settings:
        written += os.write(2, settings["stderr_last"].encode() + b"\n")
    with open(settings["pid_file"] + ".log.json", "w") as out:
        json.dump({"largest": largest, "written": written}, out)
    return int(settings.get("exit", "0"))


def cut_within(size: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while os.fstat(1).st_size > size:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def fork_children(settings: Mapping[str, str]) -> None:
    count = int(settings["children"])
    for _ in range(count):
        fork_sleeper(settings)
    while len(Path(settings["pid_file"]).read_text().split()) < count + 1:
        time.sleep(0.01)


def regroup(settings: Mapping[str, str]) -> None:
    os.setsid()
    fork_sleeper(settings, lambda: os.setpgid(0, 0))
    sleep_forever()


def fork_on_term(settings: Mapping[str, str]) -> None:
    left = {"forks": int(settings["term_forks"])}

    def on_term(_signum: int, _frame: object) -> None:
        if left["forks"] > 0:
            left["forks"] -= 1
            fork_sleeper(settings)  # inherits this handler: it forks on TERM too

    signal.signal(signal.SIGTERM, on_term)
    with open(os.path.join(os.environ["FUSION_RUN_DIR"], "term_ready"), "w"):
        pass
    sleep_forever()


def huge_progress_line(settings: Mapping[str, str]) -> None:
    first = {"erlang": 100.0, "iteration": 1, "total_iterations": 4}
    last = {"erlang": 100.0, "iteration": 3, "total_iterations": 4}
    with open(os.environ["FUSION_PROGRESS_FILE"], "ab") as progress:
        progress.write(json.dumps(first).encode() + b"\n")
        progress.flush()
        size = progress.tell()
        os.ftruncate(progress.fileno(), size + int(float(settings["progress_gib"]) * GIB))
        progress.write(b"\n" + json.dumps(last).encode() + b"\n")


def main() -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    settings = parser["hostile"] if parser.has_section("hostile") else {}
    record_pid(settings, os.getpid())
    if settings.get("close_std") == "True":
        close_std()
        huge_progress_line({"progress_gib": "0"})
    if "stdout_bytes" in settings:
        return chatty(settings)
    if "children" in settings:
        fork_children(settings)
    if settings.get("regroup") == "True":
        regroup(settings)
    if "term_forks" in settings:
        fork_on_term(settings)
    if settings.get("delete_run_dir") == "True":
        shutil.rmtree(os.environ["FUSION_RUN_DIR"])
    if "progress_gib" in settings:
        huge_progress_line(settings)
    return int(settings.get("exit", "0"))


if __name__ == "__main__":
    sys.exit(main())
