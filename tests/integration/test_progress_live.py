"""progress.jsonl, as simulations write it, reaches the progress columns."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from tests.conftest import Client, Daemon, wait_until

TYPED = [
    {"type": "start", "config": {"total_erlangs": 3, "total_iterations": 2}},
    {"type": "erlang_start", "erlang": 300.0, "erlang_index": 0, "total_erlangs": 3},
    {"type": "iteration", "erlang": 300.0, "iteration": 1, "total_iterations": 2,
     "metrics": {"blocking_prob": 0.01}},
    {"type": "iteration", "erlang": 300.0, "iteration": 2, "total_iterations": 2,
     "metrics": {"blocking_prob": 0.02}},
    {"type": "erlang_complete", "erlang": 300.0,
     "metrics": {"mean_blocking": 0.015, "ci_lower": 0.01, "ci_upper": 0.02}},
    {"type": "erlang_start", "erlang": 400.0, "erlang_index": 1, "total_erlangs": 3},
    {"type": "iteration", "erlang": 400.0, "iteration": 1, "total_iterations": 2,
     "metrics": {"blocking_prob": 0.05}},
]


def progress_of(client: Client, run_id: str) -> tuple[object, ...]:
    row = client.row(run_id)
    assert row is not None
    return (row["current_erlang"], row["total_erlangs"], row["current_iteration"],
            row["total_iterations"])


def wait_progress(client: Client, run_id: str, expected: tuple[object, ...]) -> None:
    wait_until(lambda: progress_of(client, run_id) == expected, 10,
               f"progress {expected} of run {run_id}")


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as progress:
        progress.write(data)


def sleeping_run(client: Client, daemon: Daemon, tmp_path: Path) -> tuple[str, Path, Path]:
    """A run that waits for the test; returns its id, progress file and release file."""
    release = tmp_path / f"release-{os.urandom(3).hex()}"
    run_id = client.submit({"sim": {"until": str(release)}})
    wait_until(lambda: (row := client.row(run_id)) is not None and row["pid"], 10, "the start")
    return run_id, daemon.run_dir(run_id) / "progress.jsonl", release


def test_typed_events_while_running_and_at_the_end(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    run_id = client.submit({"sim": {"progress": json.dumps(TYPED), "until": str(release)}})

    wait_progress(client, run_id, (400.0, 3, 1, 2))
    assert client.status(run_id) == "RUNNING"
    release.touch()
    assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert progress_of(client, run_id) == (400.0, 3, 1, 2)


def test_plain_records_and_lines_written_in_two_halves(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    run_id, progress, release = sleeping_run(client, daemon, tmp_path)
    line = b'{"erlang": 300.0, "iteration": 1, "total_iterations": 2}\n'

    append(progress, line[:20])
    append(progress, line[20:])
    wait_progress(client, run_id, (300.0, None, 1, 2))
    append(progress, b'{"erlang": 500, "iter')
    # Only the complete line counts; the half is held until its newline comes.
    append(progress, b'ation": 2}\n')
    wait_progress(client, run_id, (500.0, None, 2, 2))
    release.touch()
    client.wait_final(run_id)


def test_bad_lines_are_skipped_and_the_rest_applies(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    run_id, progress, release = sleeping_run(client, daemon, tmp_path)

    append(progress, b"not json\n[1, 2]\n")
    append(progress, b'{"type": "mystery", "erlang": 999}\n')
    append(progress, b'{"erlang": "three hundred", "iteration": 4, "total_iterations": 9}\n')
    append(progress, b"\xff\xfe garbage\n")
    wait_progress(client, run_id, (None, None, 4, 9))
    wait_until(lambda: "action=progress_skipped" in daemon.log_text(), 5, "a log line")
    release.touch()
    assert client.wait_final(run_id)["status"] == "COMPLETED"


def test_truncated_and_replaced_files_are_read_from_the_start(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    run_id, progress, release = sleeping_run(client, daemon, tmp_path)
    append(progress, b'{"erlang": 300.0, "iteration": 1, "total_iterations": 2}\n' * 3)
    wait_progress(client, run_id, (300.0, None, 1, 2))

    progress.write_bytes(b'{"erlang": 400.0, "iteration": 1, "total_iterations": 5}\n')
    wait_progress(client, run_id, (400.0, None, 1, 5))
    replacement = progress.with_name("progress.new")
    replacement.write_bytes(b'{"erlang": 700.0, "iteration": 3, "total_iterations": 5}\n')
    os.replace(replacement, progress)
    wait_progress(client, run_id, (700.0, None, 3, 5))
    release.touch()
    client.wait_final(run_id)


def test_a_5_mib_line_is_skipped_and_the_next_line_applies(
    daemon: Daemon, client: Client, tmp_path: Path
) -> None:
    run_id, progress, release = sleeping_run(client, daemon, tmp_path)

    for _ in range(5):
        append(progress, b"x" * (1 << 20))
    append(progress, b'\n{"erlang": 300.0, "iteration": 2, "total_iterations": 2}\n')

    wait_progress(client, run_id, (300.0, None, 2, 2))
    release.touch()
    assert client.wait_final(run_id)["status"] == "COMPLETED"


def test_a_burst_of_10000_lines_is_coalesced(daemon: Daemon, client: Client) -> None:
    with sqlite3.connect(daemon.database) as connection:
        connection.executescript(
            "CREATE TABLE progress_writes (n INTEGER);"
            "CREATE TRIGGER count_progress AFTER UPDATE OF current_iteration ON runs "
            "BEGIN INSERT INTO progress_writes VALUES (1); END;"
        )
    run_id = client.submit({"sim": {"burst": 10_000}})

    client.wait_final(run_id)

    assert progress_of(client, run_id) == (200.0, None, 10_000, 10_000)
    with sqlite3.connect(daemon.database) as connection:
        writes = connection.execute("SELECT COUNT(*) FROM progress_writes").fetchone()[0]
    assert 1 <= writes < 200


def test_error_event_message_goes_into_error_message(daemon: Daemon, client: Client) -> None:
    error = {"type": "error", "message": "RuntimeError: spectrum exhausted",
             "traceback": "Traceback ..."}
    run_id = client.submit({"sim": {"progress": json.dumps([error]), "exit": 1}})

    message = client.wait_final(run_id)["error_message"]

    assert message.startswith("exit code 1")
    assert "RuntimeError: spectrum exhausted" in message
