"""A stand-in for FUSION's simulator as it behaves (../shared/FUSION-FACTS.md).

It logs to stdout through Python logging with FUSION's format and messages,
writes no progress file, writes its `{erlang}_erlang.json` results outside the
run folder (under `output_root`) and names their folder in `Saving to:` lines,
and on SIGTERM logs `Received signal 15, saving statistics...` and goes on:
only SIGKILL ends it.

config.ini [sim] keys: erlangs (a JSON list, default [300.0, 400.0]),
iterations (default 2), step (seconds per iteration, default 0.2), threads
(result folders s1, s2, ..., default 1), output_root (where results go,
required), until and pause_before (wait for the file `until` to exist before
the Erlang of that 1-based index), workers (processes that sleep and ignore
SIGTERM, as FUSION's pool may), exit (its exit code). Every pid it creates is
listed in {run_dir}/pids.
"""

from __future__ import annotations

import configparser
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from types import FrameType

log = logging.getLogger("fusion.core.simulation")
utils = logging.getLogger("fusion.utils.logging_config")


def record_pid(pid: int) -> None:
    with open(os.path.join(os.environ["FUSION_RUN_DIR"], "pids"), "a") as pids:
        pids.write(f"{pid}\n")


def on_term(signum: int, _frame: FrameType | None) -> None:
    # What FUSION does: save and go on with the next iteration.
    log.info("Received signal %d, saving statistics...", signum)


def idle_worker(_: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record_pid(os.getpid())
    while True:
        time.sleep(3600)


def save(folder: Path, erlang: float, iteration: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stats = {"iter_stats": {str(n): {"sim_block_list": [0.0]} for n in range(iteration)},
             "blocking_mean": None, "sim_end_time": datetime.now().strftime("%m%d_%H_%M_%S")}
    partial = folder / f".{erlang}_erlang.json"
    partial.write_text(json.dumps(stats))
    partial.replace(folder / f"{erlang}_erlang.json")  # FUSION rewrites it each time
    logging.getLogger("fusion.core.persistence").info("Saving to: %s", folder)


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def simulate(sim: configparser.SectionProxy, erlang: float, load: str, folders: list[Path]) -> None:
    iterations = sim.getint("iterations", 2)
    utils.info("Starting simulation for %s Erlang (load %s)", erlang, load)
    log.info("Simulation started for Erlang: %s simulation number: s1", erlang)
    for iteration in range(1, iterations + 1):
        logging.getLogger("fusion.core.request").warning("get_requests is deprecated.")
        time.sleep(sim.getfloat("step", 0.2))
        log.info("Iteration %d out of %d completed for Erlang: %s", iteration, iterations, erlang)
        log.info("Mean of blocking: 0.0")
        for folder in folders:
            save(folder, erlang, iteration)
        utils.info("CHILD=s1 iteration=%d, done_units=%d\n", iteration - 1, iteration)
    utils.info("Completed %s Erlang in 1.00 seconds", erlang)


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    sim = parser["sim"]
    record_pid(os.getpid())
    signal.signal(signal.SIGTERM, on_term)
    if "workers" in sim:
        pool = multiprocessing.get_context("fork").Pool(sim.getint("workers"))
        pool.map_async(idle_worker, range(sim.getint("workers")))
    started = datetime.now().strftime("%m%d/%H_%M_%S_%f")
    base = Path(sim["output_root"]) / "NSFNet" / started
    folders = [base / f"s{n}" for n in range(1, sim.getint("threads", 1) + 1)]
    erlangs = [float(value) for value in json.loads(sim.get("erlangs", "[300.0, 400.0]"))]
    for index, erlang in enumerate(erlangs, start=1):
        if "until" in sim and sim.getint("pause_before", 0) == index:
            wait_for(sim["until"])
        simulate(sim, erlang, f"{index}/{len(erlangs)}", folders)
    utils.info("=" * 60)
    utils.info("BATCH SIMULATION SUMMARY")
    for erlang in erlangs:
        utils.info("\nErlang %s:", erlang)
        utils.info("  Blocking: 0.0000")
    return sim.getint("exit", 0)


if __name__ == "__main__":
    sys.exit(main())
