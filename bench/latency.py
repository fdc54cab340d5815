"""fusion-runner's latencies alone (no baseline): `python -m bench --systems fusion-runner`.

    .venv/bin/python bench/latency.py [python -m bench's options, e.g. --samples 100]

Kept for the command the README used to give; `python -m bench` (bench/run.py)
is the benchmark, with the baseline beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `bench` is importable from the repository's root only.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["--systems", "fusion-runner", *sys.argv[1:]]))
