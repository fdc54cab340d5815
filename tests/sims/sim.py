"""A tiny simulation for tests; what it does is read from its config.ini [sim] section.

Keys: exit (code), sleep (seconds, or "forever"), workers (multiprocessing
workers that sleep forever), ignore_term, setsid_child (a grandchild in its
own session), signal (kill itself with it), marker (append FUSION_RUN_ID to
that file), stdout/stderr (a line to print), progress (a JSON list of records
to append to progress.jsonl), burst (that many plain progress records),
until (wait for that file to exist before going on), after (a JSON list of
records to append to progress.jsonl once `until` exists). Every pid it creates is listed in
{run_dir}/pids, so tests can check that none is left and clean up by pid.
"""

from __future__ import annotations

import configparser
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping


def record_pid(pid: int) -> None:
    with open(os.path.join(os.environ["FUSION_RUN_DIR"], "pids"), "a") as pids:
        pids.write(f"{pid}\n")


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def worker(_: int) -> None:
    record_pid(os.getpid())
    sleep_forever()


def write_progress(sim: Mapping[str, str], key: str = "progress") -> None:
    records = json.loads(sim.get(key, "[]"))
    burst = int(sim.get("burst", "0")) if key == "progress" else 0
    if not records and not burst:
        return  # the file is only touched by a simulation that reports progress
    with open(os.environ["FUSION_PROGRESS_FILE"], "a") as progress:
        for record in records:
            progress.write(json.dumps(record) + "\n")
            progress.flush()
        for n in range(1, burst + 1):
            record = {"erlang": 100.0 + n // 100, "iteration": n, "total_iterations": burst}
            progress.write(json.dumps(record) + "\n")
            progress.flush()


def main() -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    sim = parser["sim"] if parser.has_section("sim") else {}
    record_pid(os.getpid())
    with open(os.path.join(os.environ["FUSION_OUTPUT_DIR"], "seen.json"), "w") as seen:
        env = {k: v for k, v in os.environ.items() if k.startswith("FUSION_")}
        json.dump({"env": env, "cwd": os.getcwd(), "argv": sys.argv[1:]}, seen)
    if "marker" in sim:
        with open(sim["marker"], "a") as marker:
            marker.write(os.environ["FUSION_RUN_ID"] + "\n")
    if "stdout" in sim:
        print(sim["stdout"], flush=True)
    if "stderr" in sim:
        print(sim["stderr"], file=sys.stderr, flush=True)
    if sim.get("ignore_term") == "True":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "setsid_child" in sim:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"],
            start_new_session=True,
        )
        record_pid(child.pid)
    write_progress(sim)
    if "until" in sim:
        while not os.path.exists(sim["until"]):
            time.sleep(0.01)
        write_progress(sim, "after")
    if "signal" in sim:
        os.kill(os.getpid(), getattr(signal, sim["signal"]))
    if "workers" in sim:
        count = int(sim["workers"])
        pool = multiprocessing.get_context("fork").Pool(count)
        pool.map_async(worker, range(count))
    sleep = sim.get("sleep", "0")
    if sleep == "forever":
        sleep_forever()
    time.sleep(float(sleep))
    return int(sim.get("exit", "0"))


if __name__ == "__main__":
    sys.exit(main())
