"""The client commands, run as a user runs them: `python -m fusion_runner ...`.

Most tests share one database with a run in every state (`world`), made once
by a real daemon; commands that change runs get a daemon of their own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.core.store import Store
from tests.conftest import Client, Daemon, wait_until

INI = """\
[general_settings]
erlang_start = 300
holding_time = 0.2
thread_num = s1
thread_erlangs = False
spectrum_priority = None
request_distribution = {"25": 0.10, "50": 0.10, "100": 0.50, "200": 0.20, "400": 0.10}
alpha_start = 0.000215
[sim]
stdout = hello
"""
AMBIGUOUS = ("abcd00000001", "abcd00000002")


def cli_env(database: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FUSION_RUNNER_")
           and k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    env["FUSION_RUNNER_DATABASE_URL"] = f"sqlite:///{database}"
    return env | extra


def cli(database: Path, *args: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusion_runner", *args], env=env or cli_env(database), cwd=cwd,
        capture_output=True, text=True, timeout=30,
    )


def cli_all(database: Path, *commands: tuple[str, ...],
            env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Several commands at once (they only read), each as its own process."""
    processes = [
        subprocess.Popen([sys.executable, "-m", "fusion_runner", *args],
                         env=env or cli_env(database), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=30)
        results.append(subprocess.CompletedProcess(list(args), process.returncode, stdout, stderr))
    return results


def fits(text: str) -> bool:
    return all(len(line) <= 80 for line in text.splitlines()) and "\x1b[" not in text


def no_traceback(*results: subprocess.CompletedProcess[str]) -> bool:
    return all("Traceback" not in result.stderr + result.stdout for result in results)


# --- one database with a run in every state --------------------------------------------


@dataclass
class World:
    daemon: Daemon
    ids: dict[str, str]  # completed, failed, running, cancelled, pending

    @property
    def database(self) -> Path:
        return self.daemon.database


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("world")
    daemon = Daemon(root, {"max-concurrent-runs": "1"})
    try:
        daemon.start()
        client = Client(daemon.database)
        ids = {"completed": client.submit({"sim": {"stdout": "hello from the sim"}}, name="done")}
        client.wait_final(ids["completed"])
        with open(daemon.run_dir(ids["completed"]) / "logs" / "sim.log", "a") as log:
            log.writelines(f"line {n}\n" for n in range(1, 31))
        ids["failed"] = client.submit({"sim": {"exit": "3", "stderr": "boom"}}, name="broken")
        client.wait_final(ids["failed"])
        progress = [{"type": "start", "total_erlangs": 2, "total_iterations": 4},
                    {"erlang": 300.0, "iteration": 2, "total_iterations": 4}]
        ids["running"] = client.submit({
            "general_settings": {"erlang_start": 300, "erlang_step": 100},
            "sim": {"until": str(root / "never"), "progress": json.dumps(progress)},
        }, name="busy")
        client.wait_status(ids["running"], "RUNNING")
        wait_for_iteration(client, ids["running"], 2)
        # The one slot is taken: these stay queued.
        ids["cancelled"] = client.submit(name="dropped")
        client.cancel(ids["cancelled"])
        client.wait_final(ids["cancelled"])
        ids["pending"] = client.submit(name="queued")
        for run_id in AMBIGUOUS:
            client.submit(run_id=run_id, name="twin")
        yield World(daemon, ids)
    finally:
        daemon.cleanup()


def wait_for_iteration(client: Client, run_id: str, iteration: int) -> None:
    wait_until(lambda: (client.row(run_id) or {"current_iteration": None})["current_iteration"]
               == iteration, 10, "the progress to arrive")


def unique_prefix(world: World, run_id: str) -> str:
    """The shortest prefix of at least 4 characters that no other run shares."""
    others = [other for other in [*world.ids.values(), *AMBIGUOUS] if other != run_id]
    size = 4
    while any(other.startswith(run_id[:size]) for other in others):
        size += 1
    return run_id[:size]


# --- submit ------------------------------------------------------------------------------


@pytest.fixture
def ini_file(tmp_path: Path) -> Path:
    path = tmp_path / "minimal.ini"
    path.write_text(INI)
    return path


def test_submit_inserts_a_pending_run_that_the_daemon_completes(
    daemon: Daemon, client: Client, ini_file: Path
) -> None:
    result = cli(daemon.database, "submit", str(ini_file), "--name", "sweep")

    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    row = client.wait_final(run_id)
    assert row["status"] == "COMPLETED"
    assert row["name"] == "sweep" and row["template"] == "minimal.ini"
    config = json.loads(row["config_json"])
    assert config["general_settings"]["erlang_start"] == 300
    assert config["general_settings"]["thread_erlangs"] is False
    assert config["general_settings"]["spectrum_priority"] is None
    assert config["general_settings"]["thread_num"] == "s1"
    # Values that would not render back identically stay text.
    assert config["general_settings"]["request_distribution"].startswith('{"25": 0.10')
    written = (daemon.run_dir(run_id) / "config.ini").read_text()
    for line in INI.splitlines()[1:]:
        if not line.startswith("["):
            assert line in written


def test_a_client_command_never_creates_the_database(tmp_path: Path, ini_file: Path) -> None:
    database = tmp_path / "data" / "runs.db"
    for args in (("ls",), ("submit", str(ini_file))):
        result = cli(database, *args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"fusion-runner: database_url: {database} does not exist; the fusion-runner daemon "
            "creates it (start `fusion-runner daemon` once with this database_url) "
            "(database_url from FUSION_RUNNER_DATABASE_URL)"]
    assert list(tmp_path.iterdir()) == [ini_file]


def test_submit_with_overrides_prints_json(tmp_path: Path, ini_file: Path) -> None:
    database = tmp_path / "runs.db"
    Store.open(f"sqlite:///{database}").close()  # as the daemon makes it
    result = cli(database, "submit", str(ini_file), "--json", "--template", "t.ini",
                 "--set", "general_settings.erlang_start=500",
                 "--set", "general_settings.thread_erlangs = True",
                 "--set", "extra.note=hello world")

    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["id"]
    with sqlite3.connect(database) as connection:
        name, template, status, config_json = connection.execute(
            "SELECT name, template, status, config_json FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    assert (name, template, status) == ("minimal", "t.ini", "PENDING")
    config = json.loads(config_json)
    assert config["general_settings"]["erlang_start"] == 500
    assert config["general_settings"]["thread_erlangs"] is True
    assert config["general_settings"]["holding_time"] == 0.2  # the file's own value kept
    assert config["extra"] == {"note": "hello world"}


def test_submit_of_a_missing_or_bad_file_or_setting_exits_2(
    tmp_path: Path, ini_file: Path
) -> None:
    database = tmp_path / "runs.db"
    bad = tmp_path / "bad.ini"
    bad.write_text("no section header\n")
    missing, malformed, no_dot = cli_all(
        database,
        ("submit", str(tmp_path / "nope.ini")),
        ("submit", str(bad)),
        ("submit", str(ini_file), "--set", "erlang_start=5"),
    )

    assert missing.returncode == 2 and "nope.ini" in missing.stderr
    assert malformed.returncode == 2 and "bad.ini" in malformed.stderr
    assert no_dot.returncode == 2 and "section.key=value" in no_dot.stderr
    for result in (missing, malformed, no_dot):
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    assert no_traceback(missing, malformed, no_dot)


# --- ls ----------------------------------------------------------------------------------


def test_ls_lists_every_state_newest_first_in_80_columns(world: World) -> None:
    result = cli(world.database, "ls")

    assert result.returncode == 0, result.stderr
    assert fits(result.stdout)
    header, *lines = result.stdout.splitlines()
    # STARTED needs more than 80 columns; DONE is a pending run's place in the queue.
    assert header.split() == ["ID", "NAME", "STATUS", "DONE", "TIME", "CPU", "MEM", "ERROR"]
    ids = world.ids
    newest_first = [*reversed(AMBIGUOUS), ids["pending"], ids["cancelled"], ids["running"],
                    ids["failed"], ids["completed"]]
    assert [line.split()[0] for line in lines] == newest_first
    by_id = {line.split()[0]: line for line in lines}
    assert by_id[ids["completed"]].split()[1:4] == ["done", "COMPLETED", "100%"]
    assert "-" not in by_id[ids["completed"]].split()[4:7]  # its time, CPU and memory
    # Still running: its time, and CPU and memory blank until it ends.
    assert by_id[ids["running"]].split()[1:4] == ["busy", "RUNNING", "25%"]
    assert len(by_id[ids["running"]].split()) == 5
    assert by_id[ids["failed"]].split()[1:3] == ["broken", "FAILED"]
    assert "-" not in by_id[ids["failed"]].split()[4:7]
    assert by_id[ids["failed"]].rstrip().endswith("exit code 3")
    # Cancelled before it ever ran: nothing measured.
    assert by_id[ids["cancelled"]].split()[1:] == ["dropped", "CANCELLED", "-", "-", "-", "-"]
    assert by_id[ids["pending"]].split()[1:] == ["queued", "PENDING", "#1", "-"]
    assert [by_id[twin].split()[3] for twin in AMBIGUOUS] == ["#2", "#3"]


def test_ls_filters_by_status_limits_and_prints_json(world: World) -> None:
    finals, active, newest, limited = cli_all(
        world.database,
        ("ls", "--status", "failed,CANCELLED", "--json"),
        ("ls", "--status", "RUNNING", "--status", "pending", "--json"),
        ("ls", "--limit", "2", "--json"),
        ("ls", "--limit", "2"),
    )
    ids = world.ids

    assert {row["id"] for row in json.loads(finals.stdout)} == {ids["failed"], ids["cancelled"]}
    assert {row["id"] for row in json.loads(active.stdout)} == {
        ids["running"], ids["pending"], *AMBIGUOUS}
    rows = json.loads(newest.stdout)
    assert [row["id"] for row in rows] == list(reversed(AMBIGUOUS))
    extras = ["cpu_seconds", "peak_rss_bytes", "queue_position", "worker_id", "node", "stalled_at"]
    assert all(list(row) == [*RUNS_COLUMNS, *extras] for row in rows)
    assert [row["queue_position"] for row in rows] == [3, 2]
    by_id = {row["id"]: row for row in json.loads(finals.stdout)}
    assert by_id[ids["failed"]]["cpu_seconds"] > 0
    assert by_id[ids["failed"]]["peak_rss_bytes"] > 1 << 20
    assert [by_id[ids["cancelled"]][key] for key in extras] == [None] * 6
    assert by_id[ids["failed"]]["worker_id"] == "test"  # the daemon that ran it
    running = next(row for row in json.loads(active.stdout) if row["id"] == ids["running"])
    assert [running[key] for key in extras] == [None, None, None, "test", None, None]
    assert "2 of 7 runs" in limited.stdout and fits(limited.stdout)


# --- show --------------------------------------------------------------------------------


def test_show_prints_every_column_the_run_dir_exit_record_and_log_tail(world: World) -> None:
    run_id = world.ids["completed"]
    # The client's own runs_dir is elsewhere: the directory comes from the daemon's record.
    env = cli_env(world.database, FUSION_RUNNER_RUNS_DIR=str(world.daemon.root / "elsewhere"))
    result = cli(world.database, "show", run_id, env=env)

    assert result.returncode == 0, result.stderr
    assert fits(result.stdout)
    lines = result.stdout.splitlines()
    assert f"id                {run_id}" in lines
    assert "status            COMPLETED" in lines
    for column in RUNS_COLUMNS:
        assert any(line.startswith(column) for line in lines), column
    assert f"run_dir           {world.daemon.run_dir(run_id).resolve()}" in lines
    exit_line = next(line for line in lines if line.startswith("exit "))
    assert "exit code 0" in exit_line and "s CPU" in exit_line and "MiB" in exit_line
    tail = lines[lines.index("sim.log, last 20 lines:") + 1:]
    assert [line.strip() for line in tail] == [f"line {n}" for n in range(11, 31)]


def test_show_json_of_a_failed_and_a_pending_run(world: World) -> None:
    failed, pending = cli_all(world.database, ("show", world.ids["failed"], "--json"),
                              ("show", world.ids["pending"], "--json"))
    with sqlite3.connect(world.database) as connection:
        stored = connection.execute(
            "SELECT created_at, started_at, completed_at FROM runs WHERE id = ?",
            (world.ids["failed"],),
        ).fetchone()

    shown = json.loads(failed.stdout)
    assert set(shown) == {*RUNS_COLUMNS, "worker_id", "job", "run_dir", "exit_record", "outputs",
                          "results", "parent_id", "reruns", "stalled_at", "history"}
    assert shown["job"] is None  # the local executor: no Slurm job
    assert shown["worker_id"] == "test"  # the daemon that ran it
    assert shown["outputs"] == []  # no folder outside the run folder was named
    assert shown["status"] == "FAILED" and "exit code 3" in shown["error_message"]
    assert shown["exit_record"]["exit_code"] == 3 and shown["exit_record"]["signal"] is None
    assert shown["exit_record"]["cpu_seconds"] >= 0
    assert Path(shown["run_dir"]) == world.daemon.run_dir(world.ids["failed"]).resolve()
    for column, text in zip(("created_at", "started_at", "completed_at"), stored, strict=True):
        moment = datetime.fromisoformat(shown[column])  # ISO 8601, UTC, the stored instant
        assert moment == datetime.fromisoformat(text).replace(tzinfo=UTC)
        assert shown[column].endswith("+00:00")
    queued = json.loads(pending.stdout)
    assert queued["status"] == "PENDING" and queued["exit_record"] is None
    assert queued["pid"] is None and queued["started_at"] is None


# --- ids ---------------------------------------------------------------------------------


def test_an_id_may_be_any_unique_prefix_of_4_or_more(world: World) -> None:
    completed = world.ids["completed"]
    prefix = unique_prefix(world, completed)
    by_prefix, upper, ambiguous, short, unknown, cancel, logs = cli_all(
        world.database,
        ("show", prefix, "--json"),
        ("show", AMBIGUOUS[0].upper(), "--json"),
        ("show", "abcd0000000"),
        ("show", "abc"),
        ("show", "ffffffffffff"),
        ("cancel", "abcd"),
        ("logs", "abcd"),
    )

    assert json.loads(by_prefix.stdout)["id"] == completed
    assert json.loads(upper.stdout)["id"] == AMBIGUOUS[0]
    for result in (ambiguous, cancel, logs):
        assert result.returncode == 1
        assert "ambiguous" in result.stderr
        assert AMBIGUOUS[0] in result.stderr and AMBIGUOUS[1] in result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert short.returncode == 2 and "at least 4" in short.stderr
    assert unknown.returncode == 1 and "ffffffffffff" in unknown.stderr
    assert no_traceback(ambiguous, short, unknown, cancel, logs)
    client = Client(world.database)
    assert [client.status(run_id) for run_id in AMBIGUOUS] == ["PENDING", "PENDING"]


# --- logs --------------------------------------------------------------------------------


def test_logs_prints_the_whole_log_or_says_there_is_none(world: World) -> None:
    completed, failed, pending = cli_all(
        world.database, ("logs", world.ids["completed"]), ("logs", world.ids["failed"]),
        ("logs", world.ids["pending"]),
    )

    assert completed.returncode == 0
    assert completed.stdout.splitlines() == ["hello from the sim",
                                             *(f"line {n}" for n in range(1, 31))]
    assert failed.returncode == 0 and "boom" in failed.stdout
    assert pending.returncode == 1 and "PENDING" in pending.stderr and "no log" in pending.stderr


# --- cancel ------------------------------------------------------------------------------


def test_cancel_running_pending_final_and_unknown(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = Client(daemon.database)
    running = client.submit({"sim": {"sleep": "forever"}})
    client.wait_status(running, "RUNNING")
    pending = client.submit({"sim": {}})

    result = cli(daemon.database, "cancel", running[:6], pending, running)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{running}: RUNNING -> CANCELLED",
                                          f"{pending}: PENDING -> CANCELLED"]
    assert client.wait_final(running)["status"] == "CANCELLED"
    assert client.wait_final(pending)["status"] == "CANCELLED"

    again = cli(daemon.database, "cancel", running)
    assert again.returncode == 0
    assert again.stdout == f"{running}: already CANCELLED, nothing changed\n"

    other = client.submit({"sim": {"sleep": "forever"}})
    client.wait_status(other, "RUNNING")
    unknown = cli(daemon.database, "cancel", "ffffffffffff", other)
    assert unknown.returncode == 1
    assert "ffffffffffff" in unknown.stderr
    assert unknown.stdout == f"{other}: RUNNING -> CANCELLED\n"  # the others still are
    too_short = cli(daemon.database, "cancel", "ab", pending)
    assert too_short.returncode == 2 and too_short.stdout == ""


# --- errors ------------------------------------------------------------------------------


def test_a_database_that_cannot_be_opened_is_one_line_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database\n" * 200)
    blocked = tmp_path / "file"
    blocked.write_text("")
    env = cli_env(garbage)
    results = cli_all(
        garbage,
        ("ls",),
        ("show", "0123456789ab", "--database-url", f"sqlite:///{blocked}/sub/runs.db"),
        ("watch", "--database-url", "postgresql://nobody@127.0.0.1:1/none"),
        env=env,
    )

    for result in results:
        assert len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("fusion-runner: ")
    # A file that is no database, a server that does not answer: configuration (2);
    # a path where no database is: not there yet (1), named.
    assert [result.returncode for result in results] == [2, 1, 2], results
    assert f"{blocked}/sub/runs.db does not exist" in results[1].stderr
    assert no_traceback(*results)


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    results = cli_all(tmp_path / "runs.db", ("frobnicate",),
                      ("ls", "--max-concurrent-runs", "0"), ("ls", "--status", "DONE"),
                      ("ls", "--limit", "-1"))

    assert [result.returncode for result in results] == [2, 2, 2, 2]
    assert all(len(result.stderr.splitlines()) == 1 for result in results)
    assert "DONE" in results[2].stderr and "--limit" in results[3].stderr
    assert no_traceback(*results)


def test_version_is_the_installed_packages(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = cli(tmp_path / "runs.db", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fusion-runner {version('fusion-runner')}"
