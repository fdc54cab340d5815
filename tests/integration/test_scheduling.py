"""Which runs start, in which order, how many at once, and never twice."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Client, Daemon, wait_until


def test_max_concurrent_runs_is_never_exceeded(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(max_concurrent_runs="2").start()
    client = Client(daemon.database)
    ids = [client.submit({"sim": {"sleep": "0.3"}}) for _ in range(6)]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(client.count("RUNNING"))
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for run_id in ids:
            client.wait_final(run_id, timeout=30)
    finally:
        done.set()
        sampler.join()

    assert max(samples) == 2
    assert all(client.status(run_id) == "COMPLETED" for run_id in ids)


def test_runs_start_oldest_created_at_first(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(max_concurrent_runs="1")
    daemon.start()
    client = Client(daemon.database)
    blocker = client.submit({"sim": {"sleep": "forever"}})
    client.wait_status(blocker, "RUNNING")
    base = datetime.now(UTC).replace(tzinfo=None)
    # Inserted newest first: the daemon must still start them by created_at.
    ids = [
        client.submit({"sim": {}}, created_at=base - timedelta(seconds=n)) for n in range(5)
    ]
    client.cancel(blocker)

    rows = [client.wait_final(run_id) for run_id in ids]

    started = [row["id"] for row in sorted(rows, key=lambda row: row["started_at"])]
    assert started == list(reversed(ids))


def test_two_daemons_on_one_database_start_every_run_exactly_once(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemon_factory(worker_id="alpha", max_concurrent_runs="3").start()
    daemon_factory(worker_id="beta", max_concurrent_runs="3").start()
    client = Client(first.database)
    marker = tmp_path / "marker"
    ids: list[str] = []
    for _burst in range(5):
        ids += [client.submit({"sim": {"marker": str(marker)}}) for _ in range(10)]
        wait_until(lambda: client.count("PENDING") < 5, 30, "the daemons to drain a burst")

    for run_id in ids:
        assert client.wait_final(run_id, timeout=60)["status"] == "COMPLETED"

    started = Counter(marker.read_text().split())
    assert set(started) == set(ids)
    assert max(started.values()) == 1
    alpha, beta = first.log_text(), (tmp_path / "daemon-beta.log").read_text()
    assert alpha.count("action=started") + beta.count("action=started") == len(ids)
    assert "action=started" in alpha and "action=started" in beta


def test_a_new_row_wakes_the_daemon_without_waiting_for_the_poll(
    daemon_factory: Callable[..., Daemon],
) -> None:
    # The fallback poll is 60 s: only the database watch can start these in time.
    daemon = daemon_factory(poll_interval_seconds="60").start()
    client = Client(daemon.database)

    for _ in range(3):
        run_id = client.submit({"sim": {}})
        assert client.wait_final(run_id, timeout=20)["status"] == "COMPLETED"
    cancelled = client.submit({"sim": {"sleep": "forever"}})
    client.wait_status(cancelled, "RUNNING", timeout=20)
    client.cancel(cancelled)
    assert client.wait_final(cancelled, timeout=20)["status"] == "CANCELLED"
