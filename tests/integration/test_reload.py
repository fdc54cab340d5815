"""`systemctl reload` (SIGHUP): the daemon reads its configuration again while runs live."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Client, Daemon, wait_until


def running(client: Client, run_ids: list[str]) -> int:
    return sum(client.status(run_id) == "RUNNING" for run_id in run_ids)


def reload(daemon: Daemon, expected: str) -> None:
    """SIGHUP, then wait for the log line that says the reload was handled."""
    assert daemon.process is not None
    seen = daemon.log_text().count(expected)
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.log_text().count(expected) > seen, 10, expected)


def test_a_larger_max_concurrent_runs_starts_queued_runs_at_once(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    settings = tmp_path / "config.toml"
    settings.write_text('max_concurrent_runs = 1\non_shutdown = "detach"\n')
    daemon = daemon_factory().start(extra_env={"FUSION_RUNNER_CONFIG": str(settings)})
    client = Client(daemon.database)
    run_ids = [client.submit({"sim": {"sleep": "forever"}}) for _ in range(3)]
    wait_until(lambda: running(client, run_ids) == 1, 10, "one run started")

    settings.write_text('max_concurrent_runs = 3\non_shutdown = "terminate"\n')
    reload(daemon, "action=reload_needs_restart keys=on_shutdown")

    assert "action=reload key=max_concurrent_runs old=1 new=3" in daemon.log_text()
    wait_until(lambda: running(client, run_ids) == 3, 10, "all three runs started")
    for run_id in run_ids:
        client.cancel(run_id)
    for run_id in run_ids:
        assert client.wait_final(run_id)["status"] == "CANCELLED"


def test_a_broken_configuration_keeps_the_running_settings(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    settings = tmp_path / "config.toml"
    settings.write_text("max_concurrent_runs = 1\n")
    daemon = daemon_factory().start(extra_env={"FUSION_RUNNER_CONFIG": str(settings)})
    client = Client(daemon.database)

    settings.write_text("max_concurrent_runs = 0\n")
    reload(daemon, "action=reload_refused error=max_concurrent_runs: must be an integer >= 1")
    settings.write_text("max_concurrent_runs = 1\n")
    reload(daemon, "action=reload detail='nothing changed'")

    run_ids = [client.submit({"sim": {}}) for _ in range(2)]
    for run_id in run_ids:
        assert client.wait_final(run_id)["status"] == "COMPLETED"
    assert daemon.process is not None and daemon.process.poll() is None
