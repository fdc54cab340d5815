"""`fusion-runner watch` and `logs -f` as a user runs them: in a pseudo-terminal or a pipe."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fusion_runner.core.store import Store
from tests.conftest import Client, Daemon, alive, wait_until
from tests.integration.test_cli import cli_all, cli_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = "━"


class Output:
    """Everything a child writes to one file descriptor, read by a thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError as error:  # EIO: the pty's other side has closed
                if error.errno == errno.EIO:
                    return
                raise
            if not chunk:
                return
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> None:
        wait_until(lambda: re.search(pattern, self.text), timeout, f"{pattern!r} in the output")

    def finish(self) -> str:
        self.thread.join(10)
        return self.text


@contextlib.contextmanager
def run_cli(database: Path, *args: str, tty: bool,
            **env: str) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """`fusion-runner ARGS` with stdout and stderr on an 80x24 pty, or on a pipe."""
    if tty:
        reader, writer = pty.openpty()
        fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    else:
        reader, writer = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "fusion_runner", *args], stdin=subprocess.DEVNULL,
        stdout=writer, stderr=writer, env=cli_env(database, TERM="xterm", **env),
        start_new_session=True,
    )
    os.close(writer)
    output = Output(reader)
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        output.thread.join(10)
        os.close(reader)


def last_frame(text: str) -> list[str]:
    """The table as last drawn on the terminal, colours and cursor moves removed."""
    frame = text.rsplit("ID ", 1)[1]
    return [ANSI.sub("", line) for line in ("ID " + frame).splitlines()]


@pytest.fixture
def two_slots(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory(max_concurrent_runs="2").start()


def ended_runs(database: Path, **statuses: str) -> dict[str, str]:
    """Rows that have ended as `name=STATUS`, written straight into a new table."""
    Store.open(f"sqlite:///{database}").close()
    client = Client(database)
    ids = {name: client.submit(name=name) for name in statuses}
    with client.connect() as connection:
        for name, status in statuses.items():
            connection.execute(
                "UPDATE runs SET status = ?, started_at = created_at, completed_at = created_at "
                "WHERE id = ?", (status, ids[name]))
    return ids


def test_watch_on_a_terminal_draws_a_bar_per_run_and_exits_1_when_one_failed(
    two_slots: Daemon, tmp_path: Path
) -> None:
    client = Client(two_slots.database)
    go = tmp_path / "go"
    progress = '[{"type": "start", "total_erlangs": 1, "total_iterations": 4}, ' \
               '{"erlang": 300.0, "iteration": 1, "total_iterations": 4}]'
    good = client.submit({"sim": {"until": str(go), "progress": progress}}, name="good")
    bad = client.submit({"sim": {"until": str(go), "exit": "3"}}, name="bad")
    client.wait_status(good, "RUNNING")
    client.wait_status(bad, "RUNNING")

    with run_cli(two_slots.database, "watch", good, bad[:6], tty=True) as (process, output):
        output.wait_for(rf"{good}.*RUNNING.*25%")
        output.wait_for(rf"{bad}.*RUNNING")
        assert process.poll() is None
        go.touch()
        assert process.wait(15) == 1
        text = output.finish()

    assert "\x1b[1A" in text  # redrawn in place
    assert "\x1b[32mCOMPLETED" in text  # in colour on a terminal
    frame = last_frame(text)
    assert all(len(line) <= 80 for line in frame)
    rows = [line for line in frame if BAR in line]
    assert len(rows) == 2
    assert rows[0].split()[:3] == [good, "good", "COMPLETED"] and "100%" in rows[0]
    assert rows[1].split()[:3] == [bad, "bad", "FAILED"]
    assert frame[-1] == "2 runs: 1 COMPLETED, 1 FAILED"


def test_watch_without_ids_shows_runs_as_they_start_and_exits_0(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    first_go, second_go = tmp_path / "first", tmp_path / "second"
    first = client.submit({"sim": {"until": str(first_go)}}, name="first")
    client.wait_status(first, "RUNNING")
    second = client.submit({"sim": {"until": str(second_go)}}, name="second")  # queued

    with run_cli(daemon.database, "watch", tty=False) as (process, output):
        output.wait_for(rf"{first}\s+first\s+RUNNING")
        assert second not in output.text
        first_go.touch()
        output.wait_for(rf"{second}\s+second\s+RUNNING")
        assert process.poll() is None
        second_go.touch()
        assert process.wait(15) == 0
        text = output.finish()

    # Off a terminal: plain lines, no colour, no cursor moves, 80 columns.
    assert "\x1b[" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert re.search(rf"{first}\s+first\s+COMPLETED", text)
    assert text.splitlines()[-1] == "2 runs: 2 COMPLETED"


def test_ctrl_c_stops_watching_and_leaves_the_run_alone(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {"sleep": "forever"}}, name="long")
    pid = client.wait_status(run_id, "RUNNING")["pid"]

    with run_cli(daemon.database, "watch", run_id, tty=True) as (process, output):
        output.wait_for(rf"{run_id}.*RUNNING")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 130
        text = output.finish()

    assert "stopped watching" in text and "Traceback" not in text
    assert client.status(run_id) == "RUNNING"
    assert alive(pid)


@pytest.mark.parametrize("no_color", [False, True])
def test_colour_only_without_no_color(tmp_path: Path, no_color: bool) -> None:
    database = tmp_path / "runs.db"
    run_id = ended_runs(database, done="COMPLETED")["done"]
    env = {"NO_COLOR": "1"} if no_color else {}

    with run_cli(database, "watch", run_id, tty=True, **env) as (process, output):
        assert process.wait(15) == 0
        text = output.finish()

    colours = re.findall(r"\x1b\[[0-9;]*m", text)
    assert any(code not in ("\x1b[0m", "\x1b[1m") for code in colours) is not no_color
    assert re.search(rf"{run_id}\s+done\s+COMPLETED", ANSI.sub("", text))


def test_watch_of_ended_or_unknown_runs_exits_at_once(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    ids = ended_runs(database, done="COMPLETED", dropped="CANCELLED")

    completed, cancelled, unknown = cli_all(
        database, ("watch", ids["done"]), ("watch", ids["done"], ids["dropped"]),
        ("watch", "ffffffffffff"))

    assert completed.returncode == 0 and completed.stdout.endswith("1 run: 1 COMPLETED\n")
    assert cancelled.returncode == 1
    assert cancelled.stdout.endswith("2 runs: 1 CANCELLED, 1 COMPLETED\n")
    assert unknown.returncode == 1 and "ffffffffffff" in unknown.stderr


def test_logs_follow_prints_as_the_log_grows_and_ends_with_the_run(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    run_id = client.submit({"sim": {"stdout": "first line", "until": str(go)}})
    client.wait_status(run_id, "RUNNING")
    log = daemon.run_dir(run_id) / "logs" / "sim.log"

    with run_cli(daemon.database, "logs", "-f", run_id[:5], tty=False) as (process, output):
        output.wait_for("first line")
        with open(log, "a") as sim_log:
            sim_log.write("written while followed\n")
        output.wait_for("written while followed")
        with open(log, "a") as sim_log:
            sim_log.write("the last words\n")
        assert process.poll() is None  # still following: the run goes on
        go.touch()
        assert process.wait(15) == 0
        text = output.finish()

    assert text == "first line\nwritten while followed\nthe last words\n"
    assert client.status(run_id) == "COMPLETED"
