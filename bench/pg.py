"""Run bench/latency.py on a throwaway PostgreSQL server made from this machine's binaries.

    .venv/bin/python bench/pg.py [latency.py's options, e.g. --samples 100]

The server is the tests' own (tests/pgserver.py: initdb in a temporary folder,
127.0.0.1 on a free port, trust authentication, fsync off; as the system user
`fusionpg` when run as root); nothing is installed. Its URL is printed, the
benchmark makes and drops its own database on it, and the server is stopped
and its folder removed at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

# tests.pgserver is importable from the repository's root only.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pgserver import Unavailable, start_server

LATENCY = Path(__file__).with_name("latency.py")


def main(argv: list[str]) -> int:
    try:
        server = start_server()
    except Unavailable as why:
        print(f"no PostgreSQL server can run here: {why}", file=sys.stderr)
        return 1
    try:
        url = server.url("postgres")
        print(f"PostgreSQL server: {url}", file=sys.stderr, flush=True)
        command = [sys.executable, str(LATENCY), "--database-url", url, *argv]
        return subprocess.run(command).returncode
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
