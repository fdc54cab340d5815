"""What users of `scancel`, `tail` and `watch` expect of `cancel`, `logs` and `watch`.

Bulk cancel by --status/--name (with its [y/N] question on a real terminal),
`logs -n`, `watch --once [--json]`, and Ctrl-C ending `watch` and `logs -f`
at once even on a loaded machine or while the database is locked. All with a
real daemon or a real SQLite file, commands run as processes, real signals.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fusion_runner.core.models import RUNS_COLUMNS
from fusion_runner.core.store import Store
from tests.conftest import Client, Daemon, alive, new_id, utc_text, wait_until
from tests.integration.test_cli import cli, cli_env, no_traceback
from tests.integration.test_watch import ANSI, Output, run_cli

FINAL = ("COMPLETED", "FAILED", "CANCELLED")
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


@contextlib.contextmanager
def on_terminal(
    database: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], Output, int]]:
    """`fusion-runner ARGS` with stdin, stdout and stderr on one 80x24 pty; also the pty's
    master side, to type into."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "fusion_runner", *args], stdin=slave, stdout=slave, stderr=slave,
        env=cli_env(database, TERM="xterm"), start_new_session=True,
    )
    os.close(slave)
    output = Output(master)
    try:
        yield process, output, master
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        output.thread.join(10)
        os.close(master)


@pytest.fixture
def cpu_load() -> Iterator[list[int]]:
    """Busy-looping processes, two per CPU (2 to 4 of them), for the test's length."""
    count = max(2, min(4, 2 * (os.cpu_count() or 1)))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                             stdin=subprocess.DEVNULL, start_new_session=True)
            for _ in range(count)]
    try:
        yield [hog.pid for hog in hogs]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)


def exit_status(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The process's exit status, or None if it is still running after `timeout` s."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def cursor_shown(text: str) -> bool:
    """Whether the terminal was left with its cursor visible."""
    return text.rfind(SHOW_CURSOR) >= text.rfind(HIDE_CURSOR)


# --- cancel by filter ----------------------------------------------------------------------


@pytest.fixture
def queue(daemon_factory: Callable[..., Daemon]) -> tuple[Daemon, dict[str, str]]:
    """Two RUNNING runs, three PENDING ones and a COMPLETED one, named to be told apart."""
    daemon = daemon_factory(max_concurrent_runs="2").start()
    client = Client(daemon.database)
    ids = {"sweep-done": client.submit(name="sweep-done")}
    client.wait_final(ids["sweep-done"])
    for name in ("sweep-1", "probe-1"):
        ids[name] = client.submit({"sim": {"sleep": "forever"}}, name=name)
    for name in ("sweep-1", "probe-1"):
        client.wait_status(ids[name], "RUNNING")
    for name in ("sweep-2", "probe-2", "sweep-3"):
        ids[name] = client.submit({"sim": {"sleep": "forever"}}, name=name)
    return daemon, ids


def statuses(client: Client, ids: dict[str, str]) -> dict[str, str | None]:
    return {name: client.status(run_id) for name, run_id in ids.items()}


def test_cancel_by_status_and_name_glob_cancels_only_the_matching_runs(
    queue: tuple[Daemon, dict[str, str]],
) -> None:
    daemon, ids = queue
    client = Client(daemon.database)

    pending = cli(daemon.database, "cancel", "--status", "pending", "--name", "sweep-*", "--yes")
    assert pending.returncode == 0, pending.stderr
    assert pending.stdout.splitlines() == [
        "cancelling 2 runs (PENDING: 2)",
        f"{ids['sweep-2']}: PENDING -> CANCELLED", f"{ids['sweep-3']}: PENDING -> CANCELLED"]
    assert statuses(client, ids) == {
        "sweep-done": "COMPLETED", "sweep-1": "RUNNING", "probe-1": "RUNNING",
        "sweep-2": "CANCELLED", "probe-2": "PENDING", "sweep-3": "CANCELLED"}

    by_name = cli(daemon.database, "cancel", "--name", "sweep-?", "-y")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.splitlines() == ["cancelling 1 run (RUNNING: 1)",
                                           f"{ids['sweep-1']}: RUNNING -> CANCELLED"]
    assert client.wait_final(ids["sweep-1"])["status"] == "CANCELLED"  # its process stopped
    # The freed slot may start probe-2: either way, no probe was cancelled.
    assert client.status(ids["probe-1"]) == "RUNNING"
    assert client.status(ids["probe-2"]) in ("PENDING", "RUNNING")

    final = cli(daemon.database, "cancel", "--status", "COMPLETED,failed", "--yes")
    assert final.returncode == 0, final.stderr
    assert "nothing to cancel" in final.stdout and "final" in final.stdout
    nothing = cli(daemon.database, "cancel", "--name", "no-such-*", "--yes")
    assert nothing.returncode == 0 and "nothing to cancel" in nothing.stdout
    assert client.status(ids["sweep-done"]) == "COMPLETED"
    assert client.status(ids["probe-1"]) == "RUNNING"


def test_cancel_json_by_filter_and_by_id(queue: tuple[Daemon, dict[str, str]]) -> None:
    daemon, ids = queue
    client = Client(daemon.database)

    probes = cli(daemon.database, "cancel", "--status", "RUNNING", "--status", "PENDING",
                 "--name", "probe*", "--json", "--yes")
    assert probes.returncode == 0, probes.stderr
    entries = json.loads(probes.stdout)
    assert [entry["id"] for entry in entries] == [ids["probe-1"], ids["probe-2"]]
    assert [entry["before"] for entry in entries] == ["RUNNING", "PENDING"]
    assert all(entry["cancelled"] is True and len(entry) == 3 for entry in entries)
    assert client.status(ids["probe-1"]) == client.status(ids["probe-2"]) == "CANCELLED"

    by_id = cli(daemon.database, "cancel", "--json", ids["sweep-1"], "ffffffffffff",
                ids["sweep-done"])
    assert by_id.returncode == 1  # an unknown id
    assert "ffffffffffff" in by_id.stderr and no_traceback(by_id)
    assert json.loads(by_id.stdout) == [
        {"id": ids["sweep-1"], "before": "RUNNING", "cancelled": True},
        {"id": "ffffffffffff", "before": None, "cancelled": False},
        {"id": ids["sweep-done"], "before": "COMPLETED", "cancelled": False},
    ]
    empty = cli(daemon.database, "cancel", "--status", "CANCELLED", "--json", "--yes")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


def test_cancel_ids_and_filters_together_or_neither_is_bad_usage(
    queue: tuple[Daemon, dict[str, str]],
) -> None:
    daemon, ids = queue
    client = Client(daemon.database)
    before = statuses(client, ids)

    both = cli(daemon.database, "cancel", ids["sweep-2"], "--status", "PENDING", "--yes")
    neither = cli(daemon.database, "cancel")

    for result in (both, neither):
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and no_traceback(result)
    assert statuses(client, ids) == before


@pytest.mark.parametrize("answer", ["n", "y"])
def test_cancel_by_filter_on_a_terminal_asks_first(
    queue: tuple[Daemon, dict[str, str]], answer: str,
) -> None:
    daemon, ids = queue
    client = Client(daemon.database)

    with on_terminal(daemon.database, "cancel", "--status", "PENDING") as (process, output, tty):
        output.wait_for(r"cancel 3 runs \(PENDING: 3\)\? \[y/N\] ")
        assert process.poll() is None  # waiting for the answer, nothing done yet
        assert [client.status(ids[name]) for name in ("sweep-2", "probe-2", "sweep-3")] == [
            "PENDING"] * 3
        os.write(tty, f"{answer}\n".encode())
        status = process.wait(15)
        text = output.finish()

    pending = [client.status(ids[name]) for name in ("sweep-2", "probe-2", "sweep-3")]
    if answer == "n":
        assert status == 1 and "nothing cancelled" in text
        assert pending == ["PENDING"] * 3
    else:
        assert status == 0, text
        assert f"{ids['probe-2']}: PENDING -> CANCELLED" in text
        assert pending == ["CANCELLED"] * 3
    assert client.status(ids["sweep-1"]) == client.status(ids["probe-1"]) == "RUNNING"


def test_cancel_json_with_a_filter_on_a_terminal_needs_yes(
    queue: tuple[Daemon, dict[str, str]],
) -> None:
    daemon, ids = queue
    client = Client(daemon.database)

    with on_terminal(daemon.database, "cancel", "--status", "PENDING", "--json") as (
            process, output, _):
        status = process.wait(15)
        text = output.finish()

    assert status == 2 and "--yes" in text and "[y/N]" not in text
    assert client.status(ids["sweep-2"]) == "PENDING"


# --- logs -n -------------------------------------------------------------------------------


def logs(database: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fusion_runner", "logs", *args],
                          env=cli_env(database), capture_output=True, timeout=30)


def test_logs_n_prints_exactly_the_last_lines_byte_for_byte(
    daemon: Daemon, client: Client,
) -> None:
    run_id = client.submit({"sim": {"stdout": "from the sim"}})
    client.wait_final(run_id)
    log = daemon.run_dir(run_id) / "logs" / "sim.log"
    with open(log, "ab") as sim_log:
        sim_log.write(b"".join(b"line %d\n" % n for n in range(1, 31)))
        sim_log.write(b"caf\xc3\xa9 \xff not utf-8\n")

    last3, zero, more, whole = (logs(daemon.database, run_id, *args)
                                for args in (("-n", "3"), ("-n", "0"), ("--lines", "100"), ()))

    assert last3.returncode == 0, last3.stderr
    assert last3.stdout == b"line 29\nline 30\ncaf\xc3\xa9 \xff not utf-8\n"
    assert zero.returncode == 0 and zero.stdout == b""
    assert more.stdout == whole.stdout == log.read_bytes()
    assert whole.stdout.startswith(b"from the sim\nline 1\n")

    with open(log, "ab") as sim_log:
        sim_log.write(b"unfinished")  # a last line without its newline: given one
    last2 = logs(daemon.database, run_id, "-n", "2")
    assert last2.stdout == b"caf\xc3\xa9 \xff not utf-8\nunfinished\n"
    bad = logs(daemon.database, run_id, "-n", "-1")
    assert bad.returncode == 2 and b"-1" in bad.stderr


def test_logs_n_follow_prints_the_last_lines_then_what_comes(
    daemon: Daemon, client: Client, tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    run_id = client.submit({"sim": {"stdout": "first line", "until": str(go)}})
    client.wait_status(run_id, "RUNNING")
    log = daemon.run_dir(run_id) / "logs" / "sim.log"
    wait_until(lambda: log.exists() and b"first line\n" in log.read_bytes(), 10, "the sim's line")
    with open(log, "a") as sim_log:
        sim_log.writelines(f"line {n}\n" for n in range(1, 11))

    with run_cli(daemon.database, "logs", "-n", "3", "-f", run_id, tty=False) as (
            process, output):
        output.wait_for("line 10\n")
        with open(log, "a") as sim_log:
            sim_log.write("written while followed\n")
        output.wait_for("written while followed")
        assert process.poll() is None
        go.touch()
        assert process.wait(15) == 0
        text = output.finish()

    assert text == "line 8\nline 9\nline 10\nwritten while followed\n"


# --- watch --once --------------------------------------------------------------------------


@pytest.fixture
def busy_and_queued(daemon_factory: Callable[..., Daemon]) -> tuple[Daemon, str, str]:
    """A RUNNING run at 25 % (its progress never moves on) and a PENDING one behind it."""
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = Client(daemon.database)
    progress = [{"type": "start", "total_erlangs": 2, "total_iterations": 4},
                {"erlang": 300.0, "iteration": 2, "total_iterations": 4}]
    running = client.submit({
        "general_settings": {"erlang_start": 300, "erlang_step": 100},
        "sim": {"sleep": "forever", "progress": json.dumps(progress)},
    }, name="busy")
    client.wait_status(running, "RUNNING")
    wait_until(lambda: (client.row(running) or {"current_iteration": None})["current_iteration"]
               == 2, 10, "the progress to arrive")
    pending = client.submit({"sim": {}}, name="queued")
    return daemon, running, pending


def test_watch_once_prints_the_table_once_and_exits_0(
    busy_and_queued: tuple[Daemon, str, str],
) -> None:
    daemon, running, pending = busy_and_queued

    table = cli(daemon.database, "watch", "--once")
    by_id = cli(daemon.database, "watch", "--once", pending)

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "NAME", "STATUS", "ERL", "ITER"]
    row = next(line for line in lines if line.startswith(running))
    assert row.split()[1:5] == ["busy", "RUNNING", "1/2", "2/4"] and "25%" in row
    assert pending not in table.stdout and lines[-1].strip() == "1 queued"
    assert all(len(line) <= 80 for line in lines) and "\x1b[" not in table.stdout
    assert by_id.returncode == 0
    assert re.search(rf"{pending}\s+queued\s+PENDING", by_id.stdout)
    client = Client(daemon.database)
    assert client.status(running) == "RUNNING"  # nothing waited for it, nothing changed


def test_watch_once_on_a_terminal_draws_once_in_colour(
    busy_and_queued: tuple[Daemon, str, str],
) -> None:
    daemon, running, _ = busy_and_queued

    with run_cli(daemon.database, "watch", "--once", running, tty=True) as (process, output):
        assert process.wait(15) == 0
        text = output.finish()

    assert "\x1b[1A" not in text and HIDE_CURSOR not in text  # printed, not redrawn
    assert "\x1b[36mRUNNING" in text
    assert re.search(rf"{running}\s+busy\s+RUNNING", ANSI.sub("", text))


def test_watch_once_json_lists_the_watched_runs(busy_and_queued: tuple[Daemon, str, str]) -> None:
    daemon, running, pending = busy_and_queued

    every = cli(daemon.database, "watch", "--once", "--json")
    one = cli(daemon.database, "watch", "--json", "--once", running[:6])
    live = cli(daemon.database, "watch", "--json")

    assert every.returncode == 0, every.stderr
    rows = json.loads(every.stdout)
    assert [row["id"] for row in rows] == [running, pending]  # the queued one too
    assert all(list(row) == [*RUNS_COLUMNS, "percent", "stalled_at"] for row in rows)
    assert rows[0]["status"] == "RUNNING" and rows[0]["percent"] == 25
    assert rows[0]["current_iteration"] == 2 and rows[0]["pid"] > 0
    assert rows[1]["status"] == "PENDING" and rows[1]["percent"] is None
    assert [row["id"] for row in json.loads(one.stdout)] == [running]
    assert live.returncode == 2 and "--once" in live.stderr and live.stdout == ""


def test_watch_once_json_with_no_active_run_is_an_empty_list(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    Store.open(f"sqlite:///{database}").close()

    result = cli(database, "watch", "--once", "--json")

    assert result.returncode == 0 and json.loads(result.stdout) == []


# --- Ctrl-C --------------------------------------------------------------------------------


def test_ctrl_c_ends_watch_under_cpu_load_with_130_and_a_sane_terminal(
    daemon: Daemon, client: Client, cpu_load: list[int],
) -> None:
    progress = '[{"type": "start", "total_erlangs": 1, "total_iterations": 4}]'
    run_id = client.submit({"sim": {"sleep": "forever", "progress": progress}}, name="long")
    pid = client.wait_status(run_id, "RUNNING")["pid"]

    with run_cli(daemon.database, "watch", run_id, tty=True) as (process, output):
        output.wait_for(rf"{run_id}.*RUNNING")
        assert all(alive(hog) for hog in cpu_load)
        drawn = len(output.text)
        wait_until(lambda: len(output.text) > drawn, 15, "a redraw under load")
        process.send_signal(signal.SIGINT)
        status = exit_status(process, 5)
        text = output.finish()

    assert status == 130
    assert "stopped watching; the runs go on" in text and "Traceback" not in text
    assert cursor_shown(text)
    assert client.status(run_id) == "RUNNING" and alive(pid)


def test_ctrl_c_ends_logs_follow_under_cpu_load_with_130(
    daemon: Daemon, client: Client, cpu_load: list[int],
) -> None:
    run_id = client.submit({"sim": {"stdout": "first line", "sleep": "forever"}})
    client.wait_status(run_id, "RUNNING")

    with run_cli(daemon.database, "logs", "-f", run_id, tty=True) as (process, output):
        output.wait_for("first line")
        assert all(alive(hog) for hog in cpu_load)
        process.send_signal(signal.SIGINT)
        status = exit_status(process, 5)
        text = output.finish()

    assert status == 130 and "Traceback" not in text
    assert client.status(run_id) == "RUNNING"


@pytest.fixture
def locked_database(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A database with a RUNNING run, locked by another process (SQLite's exclusive
    locking mode, in a write transaction) until the test ends: every reader waits
    out its busy timeout."""
    database = tmp_path / "runs.db"
    Store.open(f"sqlite:///{database}").close()
    run_id = new_id()
    # Closed at once (Client's connections linger): the lock below needs the file to itself.
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute(
            "INSERT INTO runs (id, name, status, config_json, template, created_at, started_at, "
            "pid) VALUES (?, 'long', 'RUNNING', '{}', 'minimal.ini', ?, ?, 1)",
            (run_id, utc_text(), utc_text()))
    locker = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "db.execute('PRAGMA locking_mode = EXCLUSIVE')\n"
         "db.execute('BEGIN EXCLUSIVE')\n"
         "db.execute('UPDATE runs SET name = name')\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n",
         str(database)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        yield database, run_id
    finally:
        locker.kill()
        locker.wait(10)


def has_open(pid: int, path: Path) -> bool:
    """Whether the process has the file open (so it is past its start-up, at the database)."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
    return False


@pytest.mark.parametrize("command", [("watch",), ("logs", "-f")])
def test_ctrl_c_ends_a_command_that_waits_for_a_locked_database(
    locked_database: tuple[Path, str], command: tuple[str, ...],
) -> None:
    database, run_id = locked_database

    with run_cli(database, *command, run_id, tty=True) as (process, output):
        wait_until(lambda: has_open(process.pid, database.resolve()), 15,
                   "the command to open the database")
        process.send_signal(signal.SIGINT)
        status = exit_status(process, 5)  # not the 10 s of SQLite's busy timeout
        text = output.finish()

    assert status == 130 and "Traceback" not in text
    assert cursor_shown(text)
    if command == ("watch",):
        assert "stopped watching; the runs go on" in text
