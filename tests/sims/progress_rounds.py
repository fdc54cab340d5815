"""A simulation for tests of progress wake-ups; config.ini [rounds] says what to do.

Keys: rounds (how many), go (a folder). Round 1 starts at once, round n once the
file `{go}/{run id}-{n}` exists; the run ends once `{go}/{run id}-{rounds + 1}`
does. Each round first changes another file of the run folder (as a
simulation's own files do), then writes `{"iteration": n}` to progress.jsonl at
once: round 1 creates the file, odd rounds after it replace it with a new one
(written aside, renamed over it), even rounds append. Every pid it creates is
listed in {run_dir}/pids, as tests/sims/sim.py does.
"""

from __future__ import annotations

import configparser
import json
import os
import sys
import time


def note(run_dir: str, text: str) -> None:
    with open(os.path.join(run_dir, "pids"), "a") as pids:
        pids.write(text)


def write_round(run_dir: str, progress: str, n: int) -> None:
    note(run_dir, "")  # another file of the folder changes first
    line = json.dumps({"iteration": n, "total_iterations": 1_000_000}) + "\n"
    if n == 1 or n % 2 == 0:
        with open(progress, "a") as file:
            file.write(line)
        return
    aside = f"{progress}.new"
    with open(aside, "w") as file:
        file.write(line)
    os.replace(aside, progress)


def main() -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    section = parser["rounds"]
    run_dir, run_id = os.environ["FUSION_RUN_DIR"], os.environ["FUSION_RUN_ID"]
    note(run_dir, f"{os.getpid()}\n")
    rounds = int(section["rounds"])
    # One go more than rounds: the run lives on until the test has seen the last line
    # (its end would have the daemon read the file whatever woke it).
    for n in range(1, rounds + 2):
        go = os.path.join(section["go"], f"{run_id}-{n}")
        while n > 1 and not os.path.exists(go):
            time.sleep(0.002)
        if n <= rounds:
            write_round(run_dir, os.environ["FUSION_PROGRESS_FILE"], n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
