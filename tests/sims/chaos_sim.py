"""The simulations of the chaos test; which one runs is its config.ini's [chaos] `kind`.

Kinds: quick (exits 0 at once), fail (exits with `code`), long (writes
`steps` progress records over `seconds`, exits 0), stubborn (ignores SIGTERM,
exits 0 after `seconds`), pool (a multiprocessing pool of `workers` working
for `seconds`, exits 0), escaper (a double-forked grandchild in a session of
its own that never ends by itself; exits 0 after `seconds`), prompt (exits
the moment it gets SIGTERM, else 0 after `seconds`).

Every run appends FUSION_RUN_ID to `marker` (so a second start shows) and
lists every pid it creates in {run_dir}/pids (so a test can check that none
is left). Only the standard library, and `multiprocessing` only when needed:
a fast start keeps 200 runs short.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import sys
import time
from collections.abc import Mapping

from sim import record_pid, sleep_forever  # this script's folder is first on sys.path


def long_run(settings: Mapping[str, str]) -> int:
    steps, seconds = int(settings["steps"]), float(settings["seconds"])
    erlangs = int(settings.get("erlangs", "2"))
    with open(os.environ["FUSION_PROGRESS_FILE"], "a") as progress:
        start = {"type": "start", "total_erlangs": erlangs, "total_iterations": steps}
        progress.write(json.dumps(start) + "\n")
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            erlang = 100.0 * (1 + (step - 1) * erlangs // steps)
            record = {"erlang": erlang, "iteration": step, "total_iterations": steps}
            progress.write(json.dumps(record) + "\n")
            progress.flush()
    return 0


def pool_work(seconds: float) -> int:
    record_pid(os.getpid())
    time.sleep(seconds)
    return os.getpid()


def pool_run(settings: Mapping[str, str]) -> int:
    import multiprocessing

    workers, seconds = int(settings["workers"]), float(settings["seconds"])
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(pool_work, [seconds] * workers)
    return 0


def escape() -> None:
    """Fork, setsid, fork again and let the middle one exit: the classic daemon."""
    middle = os.fork()
    if middle:
        os.waitpid(middle, 0)
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    record_pid(os.getpid())
    sleep_forever()


def main() -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    settings = parser["chaos"]
    record_pid(os.getpid())
    with open(settings["marker"], "a") as marker:
        marker.write(os.environ["FUSION_RUN_ID"] + "\n")
    kind = settings["kind"]
    seconds = float(settings.get("seconds", "0"))
    if kind == "fail":
        print(f"chaos: failing with {settings['code']}", file=sys.stderr, flush=True)
        return int(settings["code"])
    if kind == "long":
        return long_run(settings)
    if kind == "pool":
        return pool_run(settings)
    if kind == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif kind == "prompt":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    elif kind == "escaper":
        escape()
    time.sleep(seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
