"""The benchmark's simulation: config [bench] says what to do.

mode = exit_at   -> sleep until the wall-clock time `at`, then exit 0 at once
mode = workers   -> start `workers` multiprocessing workers and wait; exits on SIGTERM
mode = wait      -> sleep until SIGTERM
"""

import configparser
import multiprocessing
import os
import signal
import sys
import time


def idle(_: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(3600)


def main() -> int:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    bench = parser["bench"]
    mode = bench.get("mode", "wait")
    if mode == "exit_at":
        time.sleep(max(float(bench["at"]) - time.time(), 0))
        # The benchmark times from `at`: end the process right then, without
        # interpreter teardown, so that only fusion-runner's part is measured.
        os._exit(0)
    if mode == "workers":
        pool = multiprocessing.get_context("fork").Pool(int(bench.get("workers", "4")))
        pool.map_async(idle, range(int(bench.get("workers", "4"))))
    signal.sigwait({signal.SIGTERM})
    return 143


if __name__ == "__main__":
    sys.exit(main())
