"""The benchmark on a throwaway PostgreSQL server: `python -m bench --postgres`.

    .venv/bin/python bench/pg.py [python -m bench's options, e.g. --samples 100]

The server is the tests' own (tests/pgserver.py: initdb in a temporary folder,
127.0.0.1 on a free port, trust authentication, fsync off; as the system user
`fusionpg` when run as root); nothing is installed. The benchmark makes and
drops its own database on it, and the server is stopped and its folder removed
at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `bench` is importable from the repository's root only.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["--postgres", *sys.argv[1:]]))
