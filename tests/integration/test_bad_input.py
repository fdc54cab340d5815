"""Every way a run can go wrong: one FAILED row saying why, and the daemon keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Client, Daemon


def assert_next_good_run_completes(client: Client) -> None:
    assert client.wait_final(client.submit({"sim": {}}))["status"] == "COMPLETED"


def test_nonzero_exit_code_with_the_last_stderr_line(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {"stderr": "ValueError: no route to node 7", "exit": 3}})

    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert "exit code 3" in row["error_message"]
    assert "ValueError: no route to node 7" in row["error_message"]
    assert len(row["error_message"].encode()) <= 4096
    assert_next_good_run_completes(client)


def test_long_log_is_bounded_in_the_message(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {"stdout": "x" * 3000, "stderr": "y" * 3000, "exit": 1}})

    message = client.wait_final(run_id)["error_message"]

    assert message.startswith("exit code 1")
    assert len(message.encode()) <= 4096
    assert message.rstrip().endswith("y")


@pytest.mark.parametrize("signal_name", ["SIGSEGV", "SIGKILL"])
def test_killed_by_a_signal_names_it(daemon: Daemon, client: Client, signal_name: str) -> None:
    run_id = client.submit({"sim": {"signal": signal_name}})

    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert signal_name in row["error_message"]
    assert_next_good_run_completes(client)


def test_missing_executable_gives_the_os_error(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(sim_command=f"{tmp_path}/no-such-simulator {{config}}").start()
    client = Client(daemon.database)
    run_id = client.submit({"sim": {}})

    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert "No such file or directory" in row["error_message"]
    assert row["pid"] is not None  # the shim ran and recorded why


@pytest.mark.parametrize(
    ("run_id", "config_json", "expected"),
    [
        ("../../etc/x", '{"sim": {}}', "invalid run id"),
        ("ABC123DEF456", '{"sim": {}}', "invalid run id"),
        ("abc123def45", '{"sim": {}}', "invalid run id"),
        ("0123456789ab", "not json at all", "config_json"),
        ("0123456789ab", '[["sim", 1]]', "config_json"),
        ("0123456789ab", '{"sim": 3}', "config_json"),
        ("0123456789ab", '{"sim": {"x": "two\\nlines"}}', "config_json"),
        ("0123456789ab", '{"sim": {"x": {"nested": ["a\\nb"]}}}', "config_json"),
        ("0123456789ab", '{"sim": {"x": "a\\u0085b"}}', "x contains a control character"),
        ("0123456789ab", '{"sim": {"x": ["a\\u2028b"]}}', "x contains a line separator"),
    ],
)
def test_bad_rows_fail_without_spawning_or_writing_outside_runs_dir(
    daemon: Daemon, client: Client, run_id: str, config_json: str, expected: str
) -> None:
    before = sorted(p.name for p in daemon.root.iterdir())

    client.submit(config_json, run_id=run_id)
    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert expected in row["error_message"]
    assert row["pid"] is None
    assert sorted(p.name for p in daemon.root.iterdir()) == before
    assert not (daemon.runs_dir / run_id).exists()
    assert_next_good_run_completes(client)
    assert f"run={run_id} action=failed" in daemon.log_text()


@pytest.mark.parametrize("value", ["padded ", " padded", "padded\u00a0", "\u3000"])
def test_a_config_value_with_whitespace_ends_fails_naming_the_key(
    daemon: Daemon, client: Client, value: str
) -> None:
    run_id = client.submit({"sim": {"name": value}})

    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert row["error_message"] == (
        "config_json: value of sim.name has leading or trailing whitespace,"
        " which config.ini cannot keep"
    )
    assert row["pid"] is None
    assert not (daemon.runs_dir / run_id).exists()
    assert_next_good_run_completes(client)


@pytest.mark.parametrize("separator", ["\n", "\r\n", "\u2028", "\x85"])
def test_a_run_id_cannot_split_or_forge_a_daemon_log_line(
    daemon: Daemon, client: Client, separator: str
) -> None:
    run_id = f"abc{separator}FORGED action=started pid=1"

    client.submit({"sim": {}}, run_id=run_id)
    row = client.wait_final(run_id)

    assert row["status"] == "FAILED"
    assert row["error_message"].startswith("invalid run id")
    assert row["pid"] is None
    assert_next_good_run_completes(client)
    lines = daemon.log_text().splitlines()  # splits at every line break Python knows
    assert not [line for line in lines if line.startswith("FORGED")]
    escaped = run_id.encode("unicode_escape").decode("ascii")
    assert len([line for line in lines if f"run={escaped} action=failed" in line]) == 1


def test_unreadable_sim_script_fails_the_run_not_the_daemon(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(sim_command=f"{{python}} {tmp_path}/missing.py").start()
    client = Client(daemon.database)

    row = client.wait_final(client.submit({"sim": {}}))

    assert row["status"] == "FAILED"
    assert "exit code 2" in row["error_message"]
    assert "missing.py" in row["error_message"]
    assert daemon.process is not None and daemon.process.poll() is None

