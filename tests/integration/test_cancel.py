"""Cancelling and deleting runs: the whole process tree goes, the row says so."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Client, Daemon, alive, pids_of_run, wait_until

pytestmark = pytest.mark.usefixtures("backend")  # every test on SQLite, then PostgreSQL


def running_with_pids(client: Client, daemon: Daemon, run_id: str, count: int) -> list[int]:
    client.wait_status(run_id, "RUNNING")
    return wait_until(
        lambda: (pids := pids_of_run(daemon.run_dir(run_id))) and len(pids) >= count and pids,
        10, f"{count} processes of run {run_id}",
    )


def test_cancel_stops_simulation_and_its_multiprocessing_workers(
    daemon: Daemon, client: Client
) -> None:
    run_id = client.submit({"sim": {"workers": 3, "sleep": "forever"}})
    pids = running_with_pids(client, daemon, run_id, 4)

    client.cancel(run_id)
    row = client.wait_final(run_id)

    assert row["status"] == "CANCELLED"
    assert [pid for pid in pids if alive(pid)] == []
    assert not alive(row["pid"])


def test_simulation_that_ignores_sigterm_is_killed_after_grace(
    daemon: Daemon, client: Client
) -> None:
    run_id = client.submit({"sim": {"ignore_term": True, "workers": 2, "sleep": "forever"}})
    pids = running_with_pids(client, daemon, run_id, 3)

    client.cancel(run_id)
    # grace is 2 s in the test daemon; allow 1 s more
    row = client.wait_final(run_id, timeout=3.0)

    assert row["status"] == "CANCELLED"
    assert [pid for pid in pids if alive(pid)] == []
    assert "action=killed" in daemon.log_text()


def test_grandchild_in_its_own_session_is_stopped_too(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {"setsid_child": True, "sleep": "forever"}})
    pids = running_with_pids(client, daemon, run_id, 2)

    client.cancel(run_id)
    client.wait_final(run_id)

    assert [pid for pid in pids if alive(pid)] == []


def test_cancelled_pending_run_never_starts_and_later_runs_do(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory(max_concurrent_runs="1").start()
    client = daemon.client()
    blocker = client.submit({"sim": {"sleep": "forever"}})
    client.wait_status(blocker, "RUNNING")
    cancelled = client.submit({"sim": {}})
    later = client.submit({"sim": {}})

    client.cancel(cancelled)
    client.cancel(blocker)

    assert client.wait_final(later)["status"] == "COMPLETED"
    row = client.wait_final(cancelled)
    assert row["status"] == "CANCELLED"
    assert row["pid"] is None and row["started_at"] is None
    assert not daemon.run_dir(cancelled).exists()


def test_deleting_a_running_row_stops_its_processes(daemon: Daemon, client: Client) -> None:
    run_id = client.submit({"sim": {"workers": 2, "sleep": "forever"}})
    pids = running_with_pids(client, daemon, run_id, 3)

    client.delete(run_id)

    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the deleted run's processes")
    wait_until(lambda: "reason=deleted" in daemon.log_text(), 5, "the daemon to log the stop")
    assert client.row(run_id) is None


def test_cancel_wins_over_a_normal_exit(daemon: Daemon, client: Client) -> None:
    # The simulation exits 0 by itself right after it is cancelled (it ignores
    # SIGTERM and sleeps briefly): the row must stay CANCELLED.
    run_id = client.submit({"sim": {"ignore_term": True, "sleep": "0.5"}})
    client.wait_status(run_id, "RUNNING")

    client.cancel(run_id)
    row = client.wait_final(run_id)

    assert row["status"] == "CANCELLED"
    assert row["error_message"] is None
