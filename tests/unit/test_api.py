"""fusion_runner.api in-process, on a database made as the daemon makes it (no daemon running)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fusion_runner.core.api import Client, RunInfo, RunNotEnded
from fusion_runner.core.clock import utcnow
from fusion_runner.core.errors import ConfigError, InvalidRun, SchemaError, UnknownRun
from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.core.store import Store
from tests.unit.test_results import real_fusion_file


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    Store.open(f"sqlite:///{path}").close()  # as the daemon creates it
    return path


@pytest.fixture
def client(database: Path, tmp_path: Path) -> Iterator[Client]:
    with Client.open(f"sqlite:///{database}", runs_dir=tmp_path / "runs") as opened:
        yield opened


def end(client: Client, run_id: str, status: str, *, completed: bool = True) -> None:
    """What the daemon would write: RUNNING, then `status` with completed_at."""
    assert client.store.transition(run_id, "PENDING", "RUNNING")
    if status != "RUNNING":
        fields: dict[str, Any] = {"completed_at": utcnow()} if completed else {}
        assert client.store.transition(run_id, "RUNNING", status, **fields)


def test_submit_by_template_inserts_the_guis_row(client: Client) -> None:
    overrides = {"general_settings": {"max_iters": 4}}
    run_id = client.submit(template="minimal", overrides=overrides, name="four")
    run = client.get(run_id)
    assert (run.status, run.template, run.name) == ("PENDING", "minimal", "four")
    assert json.loads(run.config_json) == overrides
    assert run.created_at <= utcnow() and run.pid is None and not run.ended
    assert json.loads(client.get(client.submit(template="minimal.ini")).config_json) == {}


def test_submit_a_whole_config(client: Client) -> None:
    config = {"general_settings": {"erlang_start": 300, "thread_erlangs": False}}
    run = client.get(client.submit(config=config))
    assert (run.template, run.name, json.loads(run.config_json)) == ("custom", None, config)
    labelled = client.get(client.submit(config=config, template="nsfnet.ini"))
    assert labelled.template == "nsfnet.ini"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "give a template"),
        ({"overrides": {"s": {}}}, "give a template"),
        ({"template": "minimal", "config": {"s": {}}, "overrides": {}}, "not both"),
        ({"template": "..minimal"}, "is not a template name: it contains '..'"),
        ({"template": "a/b"}, "is not a template name: it contains '/'"),
        ({"config": {"s": {"k": "a\nb"}}}, "control character"),
        ({"config": {"s": 1}}, "is not an object"),
        ({"config": {"s": {"k": float("inf")}}}, "config_json: Out of range float"),
        ({"config": {"s": {"k": object()}}}, "config_json: Object of type object"),
        ({"template": "t" * 101}, "template 100"),
        ({"template": "t", "name": "n" * 256}, "name is at most 255"),
    ],
)
def test_a_submission_the_daemon_would_refuse_inserts_nothing(
    client: Client, kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidRun, match=expected.replace("(", r"\(")):
        client.submit(**kwargs)
    assert client.list() == []


def test_cancel_a_pending_run_once(client: Client) -> None:
    run_id = client.submit(template="minimal")
    assert client.cancel(run_id) is True
    assert client.get(run_id).status == "CANCELLED"
    assert client.cancel(run_id) is False
    with pytest.raises(UnknownRun, match="no run with id 'feedfeedfeed'"):
        client.cancel("feedfeedfeed")


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "garbage"])
def test_delete_refuses_a_run_that_has_not_ended(client: Client, status: str) -> None:
    run_id = client.submit(template="minimal")
    if status != "PENDING":
        end(client, run_id, status, completed=False)
    with pytest.raises(RunNotEnded, match=f"run {run_id} is {status}: .* cancel it first"):
        client.delete(run_id)
    assert client.get(run_id).status == status


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED"])
def test_delete_removes_an_ended_run(client: Client, status: str) -> None:
    kept, run_id = client.submit(template="minimal"), client.submit(template="minimal")
    end(client, run_id, status)
    assert client.get(run_id).ended
    client.delete(run_id)
    with pytest.raises(UnknownRun):
        client.get(run_id)
    with pytest.raises(UnknownRun):
        client.delete(run_id)
    assert [run.id for run in client.list()] == [kept]


def test_list_newest_first_by_status_and_limit(client: Client) -> None:
    ids = [client.submit(template="minimal", name=str(n)) for n in range(4)]
    end(client, ids[1], "COMPLETED")
    end(client, ids[2], "RUNNING")
    assert [run.id for run in client.list()] == ids[::-1]
    assert [run.id for run in client.list(limit=2)] == [ids[3], ids[2]]
    assert [run.id for run in client.list("COMPLETED")] == [ids[1]]
    assert [run.id for run in client.list(["PENDING", "RUNNING"])] == [ids[3], ids[2], ids[0]]
    assert all(isinstance(run, RunInfo) for run in client.list())


def test_a_run_info_has_every_column(client: Client) -> None:
    run = client.get(client.submit(template="minimal"))
    assert tuple(vars(run)) == RUNS_COLUMNS
    with pytest.raises(AttributeError):
        run.status = "RUNNING"  # type: ignore[misc]  # frozen


def test_wait_returns_an_ended_run_and_times_out_on_others(client: Client) -> None:
    done, pending = client.submit(template="minimal"), client.submit(template="minimal")
    end(client, done, "FAILED")
    assert client.wait(done, timeout=0).status == "FAILED"
    with pytest.raises(TimeoutError, match=f"run {pending} is still PENDING after 0.05 s"):
        client.wait(pending, timeout=0.05, poll=0.01)


def test_results_reads_the_run_output(client: Client, tmp_path: Path) -> None:
    run_id = client.submit(template="minimal")
    assert client.results(run_id) == []  # no folder yet
    fusion_folder = tmp_path / "runs" / run_id / "output" / "fusion"
    fusion_folder.mkdir(parents=True)
    shutil.copy(real_fusion_file(), fusion_folder)
    [point] = client.results(run_id)
    assert (point.erlang, point.iterations) == (1200.0, 4)


def test_one_client_serves_many_threads(client: Client) -> None:
    # A GUI's request handlers run in threads and share one client.
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                run_id = client.submit(template="minimal")
                assert client.get(run_id).status == "PENDING"
                client.list(limit=5)
                client.cancel(run_id)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert len(client.list("CANCELLED")) == 60


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    database = tmp_path / "nested" / "runs.db"
    with pytest.raises(ConfigError, match=f"{database} does not exist; the fusion-runner daemon"):
        Client.open(f"sqlite:///{database}")
    assert not database.parent.exists()


def test_a_database_without_a_runs_table_is_not_changed(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    sqlite3.connect(database).close()
    with pytest.raises(SchemaError, match="no runs table"):
        Client.open(f"sqlite:///{database}")
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, status TEXT)")
    with pytest.raises(SchemaError, match="the runs table lacks column 'name'"):
        Client.open(f"sqlite:///{database}")
    with sqlite3.connect(database) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert tables.fetchall() == [("runs",)]


def test_from_config_reads_the_database_url_as_the_cli_does(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text(f'database_url = "sqlite:///{database}"\nruns_dir = "{tmp_path}/r"\n')
    with Client.from_config(toml) as client:
        assert client.runs_dir == tmp_path / "r"
        run_id = client.submit(template="minimal")
    monkeypatch.setenv("FUSION_RUNNER_DATABASE_URL", f"sqlite:///{database}")
    with Client.from_config() as client:
        assert client.get(run_id).template == "minimal"


def test_from_config_finds_the_file_the_cli_finds(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "xdg" / "fusion-runner" / "config.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text(f'database_url = "sqlite:///{database}"\nruns_dir = "{tmp_path}/found"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FUSION_RUNNER_CONFIG", raising=False)
    with Client.from_config() as client:
        assert client.runs_dir == tmp_path / "found"
