"""The benchmark's simulation: config [bench] says what to do.

mode = exit_at   -> sleep until the wall-clock time `at`, then exit 0 at once
mode = workers   -> start `workers` multiprocessing workers and wait; SIGTERM ends it
mode = stream    -> append `rate` progress lines a second for `seconds`, then exit 0
mode = wait      -> wait; SIGTERM ends it

Whatever the mode, it first notes when it began executing (output/began_at), so
that the bench can time a pickup to the simulation's own first step.
"""

import configparser
import os
import signal
import sys
import time


def idle(_: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        time.sleep(3600)


def stream(rate: float, seconds: float) -> int:
    """Lines at a steady rate; each says when it was due, so lag can be measured."""
    start = time.time()
    total = int(rate * seconds)
    with open(os.environ["FUSION_PROGRESS_FILE"], "a") as progress:
        for n in range(1, total + 1):
            due = start + n / rate
            time.sleep(max(due - time.time(), 0))
            progress.write(f'{{"iteration": {n}, "total_iterations": {total}}}\n')
            progress.flush()
    return 0


def note(name: str) -> None:
    with open(os.path.join(os.environ["FUSION_OUTPUT_DIR"], name), "w") as file:
        file.write(repr(time.time()))


def main() -> int:
    note("began_at")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.environ["FUSION_CONFIG_FILE"])
    bench = parser["bench"]
    mode = bench.get("mode", "wait")
    if mode == "exit_at":
        time.sleep(max(float(bench["at"]) - time.time(), 0))
        # The benchmark times from this moment: note it, then end the process
        # without interpreter teardown, so that only fusion-runner's part counts.
        note("exited_at")
        os._exit(0)
    if mode == "stream":
        return stream(float(bench["rate"]), float(bench["seconds"]))
    if mode == "workers":
        # Imported here only: the trivial modes start as fast as Python can (~10 ms),
        # so that a throughput measures the supervisor, not this file.
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(int(bench.get("workers", "4")))
        pool.map_async(idle, range(int(bench.get("workers", "4"))))
    # SIGTERM keeps its default action: the process ends the moment it arrives.
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
