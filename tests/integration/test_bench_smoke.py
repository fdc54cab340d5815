"""The benchmark (`python -m bench`) runs end to end with tiny sizes, so that it cannot
rot: every figure printed and written for fusion-runner and, where it has it, the
baseline. Nothing here looks at the numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.figures import SPECS
from tests.pgserver import PgServer

REPO = Path(__file__).resolve().parents[2]
POSTGRES_ONLY = {"queries_live10"}


def run_bench(out: Path, *options: str) -> str:
    """stdout of `python -m bench --quick --out OUT OPTIONS`, after checking it ended well."""
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out),
                           *options], cwd=REPO, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def check_output(stdout: str, out: Path, database: str, systems: tuple[str, ...]) -> None:
    figures = json.loads((out / f"results-{database}.json").read_text())["figures"]
    for spec in SPECS:
        if spec.key in POSTGRES_ONLY and database != "postgresql":
            continue
        assert spec.label in stdout, f"no row for {spec.key}"
        measured = figures[spec.key]["systems"]
        for system in ("fusion-runner", "baseline"):
            expected = system in systems and (system == "fusion-runner" or spec.baseline)
            assert (measured[system] is not None) == expected, (spec.key, system)
    assert (out / f"latencies-{database}.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(240)
def test_bench_runs_both_supervisors_on_sqlite(tmp_path: Path) -> None:
    stdout = run_bench(tmp_path)
    check_output(stdout, tmp_path, "sqlite", ("fusion-runner", "baseline"))


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_bench_runs_fusion_runner_on_postgres(pg_server: PgServer, tmp_path: Path) -> None:
    # The bench makes (and drops) a database of its own on the session's server.
    stdout = run_bench(tmp_path, "--systems", "fusion-runner",
                       "--database-url", pg_server.url("postgres"))
    check_output(stdout, tmp_path, "postgresql", ("fusion-runner",))
