"""A researcher's commands, run as a user runs them: sweeps and batches, the key
check, reruns with their lineage, and pruning old runs.

Every command is `python -m fusion_runner ...` against a SQLite database made
as the daemon makes it; a real daemon runs the runs that must end.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fusion_runner.core.store import Store
from tests.conftest import Client, Daemon
from tests.integration.test_cli import cli, cli_env, no_traceback

MINIMAL = Path(__file__).parents[2] / "fusion_runner" / "data" / "fusion_minimal.ini"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    Store.open(f"sqlite:///{path}").close()  # as the daemon makes it
    return path


@pytest.fixture
def base_ini(tmp_path: Path) -> Path:
    path = tmp_path / "base.ini"
    shutil.copy(MINIMAL, path)
    return path


def rows(database: Path, ids: list[str] | None = None) -> list[sqlite3.Row]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        every = connection.execute(
            "SELECT * FROM runs ORDER BY created_at, id").fetchall()
    return [row for row in every if ids is None or row["id"] in ids]


# --- sweeps and batches ------------------------------------------------------------------


def test_a_sweep_queues_the_product_each_run_named_after_its_values(
    database: Path, base_ini: Path
) -> None:
    result = cli(database, "submit", str(base_ini),
                 "--sweep", "general_settings.erlang_start=300,400",
                 "--sweep", "general_settings.seed=1,2,3",
                 "--set", "general_settings.max_iters=3")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # every key of FUSION's template is known
    ids = result.stdout.split()
    assert len(ids) == 6 and len(set(ids)) == 6
    queued = rows(database)
    assert [row["id"] for row in queued] == ids  # queued (and started) in the order printed
    assert [row["name"] for row in queued] == [
        f"base erlang_start={erlang} seed={seed}" for erlang in (300, 400) for seed in (1, 2, 3)]
    for row, (erlang, seed) in zip(queued, [(e, s) for e in (300, 400) for s in (1, 2, 3)],
                                   strict=True):
        assert row["status"] == "PENDING" and row["template"] == "base.ini"
        general = json.loads(row["config_json"])["general_settings"]
        assert (general["erlang_start"], general["seed"]) == (erlang, seed)
        assert general["max_iters"] == 3 and general["erlang_stop"] == 500  # --set, the file


def test_a_batch_of_files_with_a_sweep_and_a_name_prefix_prints_json(
    database: Path, base_ini: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.ini"
    other.write_text(MINIMAL.read_text().replace("k_paths = 3", "k_paths = 5"))
    result = cli(database, "submit", str(base_ini), str(other), "--name", "exp",
                 "--sweep", "routing_settings.k_paths=1,2", "--json")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [run["name"] for run in shown] == [
        "exp base k_paths=1", "exp base k_paths=2", "exp other k_paths=1", "exp other k_paths=2"]
    assert [run["config"] for run in shown] == [{"routing_settings": {"k_paths": k}}
                                                for k in (1, 2, 1, 2)]
    by_id = {row["id"]: row for row in rows(database)}
    assert set(by_id) == {run["id"] for run in shown}
    assert [by_id[run["id"]]["template"] for run in shown] == [
        "base.ini", "base.ini", "other.ini", "other.ini"]

    # Two files without a sweep: one run each, named after the file; one id per line.
    plain = cli(database, "submit", str(base_ini), str(other))
    assert plain.returncode == 0, plain.stderr
    assert [row["name"] for row in rows(database, plain.stdout.split())] == ["base", "other"]
    # One file without a sweep: the object as before.
    single = json.loads(cli(database, "submit", str(base_ini), "--json").stdout)
    assert set(single) == {"id", "name", "config"} and single["name"] == "base"


def test_a_bad_sweep_is_bad_usage_and_queues_nothing(database: Path, base_ini: Path) -> None:
    for sweep in ("general_settings.seed", "seed=1,2", "general_settings.seed=1,,2",
                  "general_settings.seed=1,1"):
        result = cli(database, "submit", str(base_ini), "--sweep", sweep)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert rows(database) == []


# --- key check ---------------------------------------------------------------------------


def test_an_unknown_key_is_a_warning_with_the_closest_known_key(
    database: Path, base_ini: Path
) -> None:
    result = cli(database, "submit", str(base_ini), "--set", "general_settings.erlang_stp=500",
                 "--set", "slurm.cpus_per_task=4", "--set", "general_settings.seed=7")

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "fusion-runner: warning: general_settings.erlang_stp is not a key FUSION knows; "
        "did you mean general_settings.erlang_stop?"]  # slurm's and refsim's keys are known
    assert len(rows(database)) == 1


def test_strict_makes_an_unknown_key_an_error_and_inserts_nothing(
    database: Path, base_ini: Path
) -> None:
    result = cli(database, "submit", str(base_ini), "--strict",
                 "--sweep", "general_settings.erlang_start=300,400",
                 "--set", "general_settings.erlang_stp=500")

    assert result.returncode == 2
    assert "did you mean general_settings.erlang_stop?" in result.stderr
    assert "nothing queued" in result.stderr and result.stdout == ""
    assert rows(database) == [] and no_traceback(result)


# --- rerun -------------------------------------------------------------------------------


def test_rerun_queues_the_same_config_and_template_and_show_lists_the_lineage(
    daemon: Daemon, client: Client
) -> None:
    parent = client.submit({"sim": {"exit": "3"}, "general_settings": {"erlang_start": 300}},
                           name="flaky")
    client.wait_final(parent)

    same = cli(daemon.database, "rerun", parent[:6])
    changed = cli(daemon.database, "rerun", parent, "--json",
                  "--set", "sim.exit=0", "--set", "general_settings.erlang_stp=5")
    named = cli(daemon.database, "rerun", parent, "--name", "again")

    assert same.returncode == 0 and same.stderr == "", same.stderr
    assert changed.returncode == 0, changed.stderr
    assert "did you mean general_settings.erlang_stop?" in changed.stderr
    same_id, shown, named_id = same.stdout.strip(), json.loads(changed.stdout), named.stdout.strip()
    assert shown["parent_id"] == parent
    assert shown["config"] == {"sim": {"exit": 0}, "general_settings": {"erlang_stp": 5}}
    original, copy, edited = client.row(parent), client.row(same_id), client.row(shown["id"])
    assert original is not None and copy is not None and edited is not None
    assert copy["config_json"] == original["config_json"]  # as it was, text and all
    assert copy["template"] == edited["template"] == original["template"]
    assert (copy["name"], edited["name"]) == (
        "flaky (rerun)", "flaky (rerun: exit=0 erlang_stp=5)")
    assert client.row(named_id)["name"] == "again"  # type: ignore[index]
    expected = json.loads(original["config_json"])
    expected["sim"]["exit"] = 0
    expected["general_settings"]["erlang_stp"] = 5
    assert json.loads(edited["config_json"]) == expected
    assert client.wait_final(shown["id"])["status"] == "COMPLETED"  # the rerun really runs

    parent_json = json.loads(cli(daemon.database, "show", parent, "--json").stdout)
    child_json = json.loads(cli(daemon.database, "show", same_id, "--json").stdout)
    assert parent_json["parent_id"] is None
    assert parent_json["reruns"] == [same_id, shown["id"], named_id]
    assert child_json["parent_id"] == parent and child_json["reruns"] == []
    parent_text = cli(daemon.database, "show", parent).stdout
    child_text = cli(daemon.database, "show", same_id).stdout
    assert "parent            -" in parent_text
    assert same_id in parent_text.split("reruns", 1)[1].split("run_dir", 1)[0]
    assert f"parent            {parent}" in child_text


def test_rerun_of_an_unknown_id_fails(database: Path) -> None:
    result = cli(database, "rerun", "abcdef012345")
    assert result.returncode == 1 and "no run with id" in result.stderr
    assert no_traceback(result)


# --- prune -------------------------------------------------------------------------------


def old(days: float) -> datetime:
    return datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days)


def test_prune_removes_old_ended_runs_and_folders_and_keeps_live_and_recent_ones(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = daemon.client()
    ended = {name: client.submit({"sim": {"exit": code, "stdout": "x" * 5000}}, name=name)
             for name, code in (("old-ok", "0"), ("old-failed", "3"), ("recent", "0"),
                                ("outside", "0"))}
    for run_id in ended.values():
        client.wait_final(run_id)
    running = client.submit({"sim": {"until": str(tmp_path / "never")}}, name="busy")
    client.wait_status(running, "RUNNING")
    pending = client.submit(name="queued", created_at=old(60))
    for name in ("old-ok", "old-failed", "outside"):
        client.execute("UPDATE runs SET completed_at = ? WHERE id = ?", (old(40), ended[name]))
    client.execute("UPDATE runs SET created_at = ?, started_at = ? WHERE id = ?",
                   (old(50), old(50), running))
    # A folder the daemon recorded outside runs_dir is never removed.
    elsewhere = tmp_path / "elsewhere" / ended["outside"]
    shutil.copytree(daemon.run_dir(ended["outside"]), elsewhere)
    client.execute("UPDATE fusion_runner_claims SET run_dir = ? WHERE run_id = ?",
                   (str(elsewhere), ended["outside"]))
    client.execute("INSERT INTO fusion_runner_meta (run_id, parent_id, priority, held) "
                   "VALUES (?, ?, 0, 0)", (ended["old-failed"], ended["old-ok"]))
    env = cli_env(daemon.database, FUSION_RUNNER_RUNS_DIR=str(daemon.runs_dir))
    gone = [ended["old-ok"], ended["old-failed"], ended["outside"]]

    dry = cli(daemon.database, "prune", "--older-than", "30d", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would prune 3 runs (COMPLETED: 2, FAILED: 1)" in dry.stdout
    assert "2 folders: would free" in dry.stdout and "would free 0 B" not in dry.stdout
    assert all(run_id in dry.stdout for run_id in gone)
    assert all(client.row(run_id) is not None for run_id in [*ended.values(), running, pending])
    assert all(daemon.run_dir(run_id).is_dir() for run_id in ended.values())

    only_failed = cli(daemon.database, "prune", "--older-than", "30d", "--status", "FAILED",
                      "--json", env=env)
    assert only_failed.returncode == 0, only_failed.stderr
    report = json.loads(only_failed.stdout)
    assert [run["id"] for run in report["runs"]] == [ended["old-failed"]]
    assert report["bytes"] > 5000 and report["runs"][0]["folder_removed"] is True
    assert not daemon.run_dir(ended["old-failed"]).exists()

    result = cli(daemon.database, "prune", "--older-than", "30d", env=env)
    assert result.returncode == 0, result.stderr
    assert "pruned 2 runs (COMPLETED: 2)" in result.stdout and "freed" in result.stdout
    assert "kept 1 folder that is not in runs_dir" in result.stdout
    for run_id in gone:
        assert client.row(run_id) is None
    assert not daemon.run_dir(ended["old-ok"]).exists()
    assert elsewhere.is_dir()  # outside runs_dir: left alone
    for run_id in (ended["recent"], running, pending):
        assert client.row(run_id) is not None
    assert daemon.run_dir(ended["recent"]).is_dir() and daemon.run_dir(running).is_dir()
    assert client.row(running)["status"] == "RUNNING"  # type: ignore[index]
    with sqlite3.connect(daemon.database) as connection:
        for table in ("fusion_runner_claims", "fusion_runner_meta", "fusion_runner_events",
                      "fusion_runner_outputs", "fusion_runner_results"):
            marks = ",".join("?" * len(gone))
            left = connection.execute(
                f"SELECT COUNT(*) FROM {table} WHERE run_id IN ({marks})", gone).fetchone()[0]
            assert left == 0, table

    again = cli(daemon.database, "prune", "--older-than", "30d", env=env)
    assert again.returncode == 0 and again.stdout.startswith("nothing to prune")


def test_prune_refuses_a_bad_duration_or_a_live_status(database: Path) -> None:
    for args in (("--older-than", "30"), ("--older-than", "soon"),
                 ("--older-than", "1d", "--status", "RUNNING"), ()):
        result = cli(database, "prune", *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, (args, result)
