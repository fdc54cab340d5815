"""Every way a run can go wrong: one FAILED row saying why, and the daemon keeps serving."""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
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



# --- fuzzed shapes through a real daemon ------------------------------------------------------

ODD_IDS = [
    "", ".", "..", "../abcdef1234", "abc/def12345", "abc\\def12345", "/tmp/abcdefg",
    "0123456789a", "0123456789abc", "0123456789ab\n", "012345678\x00ab", "é123456789ab",
    "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19ab",  # fullwidth digits
    "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669ab",  # Arabic-Indic digits
]


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_odd_run_ids_fail_and_nothing_is_written_outside_runs_dir(
    daemon: Daemon, client: Client
) -> None:
    # Where an id taken as a path would lead out of runs_dir: none of these may appear.
    escapes = {(daemon.runs_dir / run_id).resolve() for run_id in ODD_IDS if "\x00" not in run_id}
    escapes = {path for path in escapes
               if not path.is_relative_to(daemon.runs_dir) and not path.exists()}
    daemon.runs_dir.mkdir(exist_ok=True)
    root_before = {path.name for path in daemon.root.iterdir()}
    runs_before = tree(daemon.runs_dir)

    for run_id in ODD_IDS:
        client.execute(  # not client.submit, which takes "" for "make one up"
            "INSERT INTO runs (id, name, status, config_json, template, created_at) "
            "VALUES (?, 'odd', 'PENDING', '{\"sim\": {}}', 'minimal.ini', ?)",
            (run_id, datetime.now(UTC).replace(tzinfo=None)),
        )
    for run_id in ODD_IDS:
        row = client.wait_final(run_id)
        assert row["status"] == "FAILED"
        assert row["error_message"].startswith("invalid run id"), row["error_message"]
        assert row["pid"] is None

    assert_next_good_run_completes(client)
    assert escapes and not [path for path in escapes if path.exists()]
    assert {path.name for path in daemon.root.iterdir()} == root_before
    made = tree(daemon.runs_dir) - runs_before
    assert {path.relative_to(daemon.runs_dir).parts[0] for path in made} <= {
        row_id for row_id in client_ids(client) if re.fullmatch("[0-9a-f]{12}", row_id)}
    assert daemon.process is not None and daemon.process.poll() is None


def client_ids(client: Client) -> list[str]:
    with client.connect() as connection:
        return [row["id"] for row in connection.execute("SELECT id FROM runs")]


def ini_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# Each either completes with a faithful config.ini or fails naming its culprit.
NASTY_CONFIGS: list[tuple[str, str | None]] = [
    (json.dumps({"sim": {}, "x": {"%(sim)s": "%(x)s %% 50%", "k": "[section] a = b ; # c",
                                  "DEFAULT": "[DEFAULT]", "json": {"a": ["[x]", "%"]}}}), None),
    (json.dumps({"sim": {}, "big": {"value": "v" * 2_000_000, "list": list(range(10_000))}}),
     None),
    (json.dumps({"sim": {}, "ünï😀": {"ключ": "値", "n": 1e300, "t": True, "z": None}}), None),
    (json.dumps({"sim": {}, "x": {"k": "two\nlines"}}), "value of x.k contains a control"),
    (json.dumps({"sim": {}, "[x]": {}}), "section name '[x]' contains '['"),
    (json.dumps({"sim": {}, "DEFAULT": {"k": 1}}), "section name 'DEFAULT' is configparser's"),
    (json.dumps({"sim": {}, "x": {"k=": 1}}), "key name 'k=' in section 'x' contains '='"),
    ("[" * 100_000 + "]" * 100_000, "config_json is not valid JSON"),
    ('{"sim": {"k": ' + "9" * 5000 + "}}", "config_json is not valid JSON"),
    ('"just a string"', "config_json must be a JSON object of sections, not a string"),
]


@pytest.mark.timeout(90)
def test_nasty_config_json_shapes_complete_faithfully_or_fail_naming_the_culprit(
    daemon: Daemon, client: Client
) -> None:
    runs = [(client.submit(text), text, culprit) for text, culprit in NASTY_CONFIGS]
    for run_id, text, culprit in runs:
        row = client.wait_final(run_id, timeout=30)
        if culprit is not None:
            assert row["status"] == "FAILED"
            assert culprit in row["error_message"], row["error_message"]
            assert row["pid"] is None
            assert not daemon.run_dir(run_id).exists()
            continue
        assert row["status"] == "COMPLETED", row["error_message"]
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(daemon.run_dir(run_id) / "config.ini", encoding="utf-8")
        config = json.loads(text)
        assert {name: dict(parser[name]) for name in parser.sections()} == {
            section: {key: ini_text(value) for key, value in options.items()}
            for section, options in config.items()
        }
    assert daemon.process is not None and daemon.process.poll() is None


# --- configuration files the daemon cannot use ----------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (f"stop_grace_seconds = {10**400}", "stop_grace_seconds"),
        ("lease_timeout_seconds = 1e300", "lease_timeout_seconds"),
        ('database_url = "sqlite:///runs\\u0000.db"', "database_url"),
        ('runs_dir = "runs\\u0000"', "runs_dir"),
        ('max_concurrent_runs = "3"', "max_concurrent_runs"),
        ("[runs_dir]\nx = 1", "runs_dir"),
    ],
)
def test_a_hostile_configuration_value_exits_2_naming_the_key(
    tmp_path: Path, line: str, key: str
) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(f"{line}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_RUNNER_")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fusion_runner", "daemon", "--config", str(config_file),
         "--database-url", f"sqlite:///{tmp_path}/runs.db", "--runs-dir", str(tmp_path / "runs")]
        if not line.startswith("database_url") else
        [sys.executable, "-m", "fusion_runner", "daemon", "--config", str(config_file),
         "--runs-dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        _, stderr = daemon.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # it started: the value was taken
        os.killpg(daemon.pid, signal.SIGKILL)
        _, stderr = daemon.communicate()
    assert daemon.returncode == 2, stderr
    assert stderr.startswith(f"fusion-runner: {key}: "), stderr
    assert "Traceback" not in stderr
