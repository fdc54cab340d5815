"""fusion_runner.api used from a separate process, against a real daemon on real SQLite."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fusion_runner.core.models import RUNS_COLUMNS
from tests.conftest import Client, Daemon, wait_until

pytestmark = pytest.mark.timeout(60)

API_CLIENT = Path(__file__).parents[1] / "sims" / "api_client.py"
ROOT = Path(__file__).resolve().parents[2]


def api(database: Path, method: str, **kwargs: Any) -> dict[str, Any]:
    """One API call in its own Python process; its JSON answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    env["PYTHONPATH"] = str(ROOT)
    argv = [sys.executable, str(API_CLIENT), f"sqlite:///{database}", method, json.dumps(kwargs)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def result(database: Path, method: str, **kwargs: Any) -> Any:
    answer = api(database, method, **kwargs)
    assert "error" not in answer, answer
    return answer["result"]


def test_submit_runs_to_completed_and_get_list_delete(daemon: Daemon, client: Client) -> None:
    run_id = result(daemon.database, "submit", config={"sim": {"stdout": "hello"}}, name="first")

    row = client.wait_final(run_id)
    assert (row["status"], row["name"], row["template"]) == ("COMPLETED", "first", "custom")
    assert json.loads(row["config_json"]) == {"sim": {"stdout": "hello"}}
    run = result(daemon.database, "get", run_id=run_id)
    assert run["id"] == run_id and run["status"] == "COMPLETED"
    assert run["completed_at"] is not None and run["pid"] == row["pid"]
    assert tuple(run) == RUNS_COLUMNS  # every SPEC §1 column
    completed = result(daemon.database, "list", status="COMPLETED")
    assert [item["id"] for item in completed] == [run_id]
    assert result(daemon.database, "list", status=["PENDING", "RUNNING"]) == []

    assert result(daemon.database, "delete", run_id=run_id) is None
    assert client.row(run_id) is None
    assert api(daemon.database, "get", run_id=run_id)["error"] == "UnknownRun"
    assert api(daemon.database, "delete", run_id=run_id)["error"] == "UnknownRun"


def test_cancel_a_running_run_and_delete_only_once_ended(daemon: Daemon, client: Client) -> None:
    run_id = result(daemon.database, "submit", config={"sim": {"sleep": "forever"}})
    wait_until(lambda: (row := client.row(run_id)) is not None and row["pid"], 10, "the spawn")

    refused = api(daemon.database, "delete", run_id=run_id)
    assert refused["error"] == "RunNotEnded"
    assert f"run {run_id} is RUNNING" in refused["message"]
    assert "cancel it first" in refused["message"]
    assert client.status(run_id) == "RUNNING"

    assert result(daemon.database, "cancel", run_id=run_id) is True
    row = client.wait_final(run_id)
    assert row["status"] == "CANCELLED"
    assert result(daemon.database, "cancel", run_id=run_id) is False  # ended: nothing changed
    assert result(daemon.database, "get", run_id=run_id)["status"] == "CANCELLED"
    assert result(daemon.database, "delete", run_id=run_id) is None
    assert client.row(run_id) is None


def test_a_pending_run_is_not_deleted_and_a_cancelled_one_never_starts(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = Client(daemon.database)
    busy = result(daemon.database, "submit", config={"sim": {"sleep": "forever"}})
    waiting = result(daemon.database, "submit", config={"sim": {}})
    client.wait_status(busy, "RUNNING")

    assert api(daemon.database, "delete", run_id=waiting)["error"] == "RunNotEnded"
    assert result(daemon.database, "cancel", run_id=waiting) is True
    row = client.wait_final(waiting)
    assert (row["status"], row["pid"]) == ("CANCELLED", None)
    assert result(daemon.database, "cancel", run_id=busy) is True
    client.wait_final(busy)


def test_submit_by_template_stores_the_stem_and_the_overrides(
    daemon: Daemon, client: Client
) -> None:
    overrides = {"general_settings": {"max_iters": 4, "route_method": "k_shortest_path"}}
    run_id = result(daemon.database, "submit", template="minimal", overrides=overrides)

    row = client.row(run_id)
    assert row is not None
    assert (row["template"], json.loads(row["config_json"])) == ("minimal", overrides)
    client.wait_final(run_id)  # the daemon here has no templates_dir: the overrides are it all


def test_a_template_and_its_overrides_through_the_daemon(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "tiny.ini").write_text("[sim]\nstdout = from the template\nexit = 0\n")
    daemon = daemon_factory(templates_dir=str(templates)).start()
    client = Client(daemon.database)

    as_is = result(daemon.database, "submit", template="tiny", overrides={})
    changed = result(daemon.database, "submit", template="tiny.ini", overrides={"sim": {"exit": 3}})
    missing = result(daemon.database, "submit", template="absent")

    assert client.wait_final(as_is)["status"] == "COMPLETED"
    log = (daemon.run_dir(as_is) / "logs" / "sim.log").read_text()
    assert log == "from the template\n"
    row = client.wait_final(changed)
    assert (row["status"], row["error_message"].splitlines()[0]) == ("FAILED", "exit code 3")
    row = client.wait_final(missing)
    assert row["status"] == "FAILED"
    assert "template 'absent' not found" in row["error_message"]
    assert str(templates) in row["error_message"]


def test_the_client_never_creates_the_database(tmp_path: Path) -> None:
    database = tmp_path / "nested" / "runs.db"
    answer = api(database, "list")
    assert answer["error"] == "NoDatabase"
    assert f"{database} does not exist" in answer["message"]
    assert not database.exists() and not database.parent.exists()

    database.parent.mkdir()
    sqlite3.connect(database).close()  # an empty file: no runs table
    answer = api(database, "list")
    assert (answer["error"], "no runs table" in answer["message"]) == ("SchemaError", True)
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
