"""`python -m fusion_runner.refsim --config C --progress-file P --output-dir O`.

Exit status: 0 done; 1 crashed, here or in a worker (an `error` event with the
traceback), or a worker died (an `error` event naming its pid, Erlang and signal); 2 bad
configuration (an `error` event naming the key, and one line on stderr);
128 + signal number when stopped by SIGTERM (143) or SIGINT (130).
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from fusion_runner.refsim import settings, sweep, topology
from fusion_runner.refsim.events import ProgressFile

EXIT_CRASHED = 1
EXIT_BAD_CONFIG = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """Stopped by a signal (a BaseException, so no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        progress = ProgressFile(args.progress_file)
    except OSError as exc:
        print(f"refsim: cannot open the progress file: {exc}", file=sys.stderr)
        return EXIT_CRASHED
    with progress:
        return _run(args, progress)


def _run(args: argparse.Namespace, progress: ProgressFile) -> int:
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in STOP_SIGNALS}
    try:
        return _sweep(args, progress)
    finally:
        for signum, handler in previous.items():  # for callers in-process (tests)
            signal.signal(signum, handler)


def _sweep(args: argparse.Namespace, progress: ProgressFile) -> int:
    try:
        config = settings.load(args.config)
        network = topology.build(config.network, config.k_paths)
        sweep.run(config, network, progress, args.output_dir)
    except settings.SettingsError as exc:
        return _fail(progress, EXIT_BAD_CONFIG, str(exc), key=exc.key)
    except Terminated as exc:
        return _fail(progress, 128 + exc.signum, str(exc))
    except sweep.WorkerFailed as exc:  # the worker's traceback, if it had one
        return _fail(progress, EXIT_CRASHED, str(exc), exc.traceback)
    except Exception as exc:
        return _fail(progress, EXIT_CRASHED, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return 0


def _fail(progress: ProgressFile, status: int, message: str, tb: str = "", **fields: str) -> int:
    print(f"refsim: {message}", file=sys.stderr, flush=True)
    progress.error(message, tb, **fields)
    return status


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    """Raise in the main thread, once: a second signal while we stop is ignored."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise Terminated(signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fusion_runner.refsim", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="FUSION INI file")
    parser.add_argument("--progress-file", type=Path, required=True, help="progress.jsonl")
    parser.add_argument("--output-dir", type=Path, required=True, help="{erlang}_erlang.json")
    return parser
