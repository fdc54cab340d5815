"""The shipped unit under a real systemd: start, restart, crash, watchdog, cancel, shutdown.

Each case runs the reference simulation (with its multiprocessing pool) as the
real `fusion-runner` user, under every hardening option the unit ships with.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.pgserver import PgServer
from tests.systemd_sandbox import CONFIG_DIR, UNIT, Service, refsim_config, utc_text

CONFIG_FILE = CONFIG_DIR / "config.toml"

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(180)]

# Long enough to be RUNNING through a restart (seconds on this machine), short
# enough for the suite; the tests wait on conditions, never on this guess.
LONG_RUN = 700_000
SHORT_RUN = 50_000


def start(service: Service, settings: dict[str, object] | None = None, dropin: str = "") -> None:
    # max_cores: each reference run counts min(CPUs, 3 Erlang points) cores; two at once here.
    service.install({"max_concurrent_runs": 2, "max_cores": 16, "stop_grace_seconds": 3,
                     "log_level": "INFO"}
                    | (settings or {}), dropin)
    service.systemctl("start", UNIT)
    wait_until(lambda: "action=ready" in service.journal(), 30, "the ready line")


def running_with_progress(service: Service, run_id: str) -> dict[str, Any]:
    def progressing() -> dict[str, Any] | None:
        row = service.row(run_id)
        return row if row["status"] == "RUNNING" and row["current_erlang"] is not None else None

    return wait_until(progressing, 60, f"run {run_id} to report progress")


def final(service: Service, run_id: str, timeout: float = 120) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        row = service.row(run_id)
        return row if row["completed_at"] is not None else None

    return wait_until(ended, timeout, f"run {run_id} to end")


def progress_of(row: dict[str, Any]) -> tuple[float, int]:
    return (row["current_erlang"] or 0.0, row["current_iteration"] or 0)


def only_the_daemon_left(service: Service) -> bool:
    return len(service.cgroup_pids()) == 1


def two_running_runs(service: Service) -> dict[str, dict[str, Any]]:
    runs = [service.submit(LONG_RUN) for _ in range(2)]
    return {run_id: running_with_progress(service, run_id) for run_id in runs}


def assert_adopted_and_completed(service: Service, before: dict[str, dict[str, Any]]) -> None:
    for run_id in before:
        wait_until(lambda run_id=run_id: f"run={run_id} action=adopted" in service.journal(),
                   60, f"run {run_id} to be adopted")
    # Progress still moves under the new daemon, and the runs end as they should.
    for run_id, row in before.items():
        wait_until(lambda run_id=run_id, row=row:
                   progress_of(service.row(run_id)) > progress_of(row)
                   or service.row(run_id)["status"] != "RUNNING",
                   120, f"progress of run {run_id} after the restart")
    for run_id, row in before.items():
        ended = final(service, run_id)
        assert ended["status"] == "COMPLETED", ended["error_message"]
        assert ended["pid"] == row["pid"]
        assert ended["current_erlang"] == 500.0


def test_start_reports_ready_and_counts(service: Service) -> None:
    start(service)
    assert service.show("ActiveState") == "active"
    wait_until(lambda: service.show("StatusText") == "0 running, 0 pending", 10,
               "the STATUS= line")
    run_id = service.submit(SHORT_RUN)
    assert final(service, run_id)["status"] == "COMPLETED"
    assert "action=ready" in service.journal()


def test_restart_adopts_running_runs(service: Service) -> None:
    start(service)
    before = two_running_runs(service)
    service.systemctl("restart", UNIT)
    assert_adopted_and_completed(service, before)
    assert "FAILED" not in {service.row(run_id)["status"] for run_id in before}


def test_a_killed_daemon_is_restarted_and_adopts_its_runs(service: Service) -> None:
    start(service)
    before = two_running_runs(service)
    first = service.main_pid()
    service.systemctl("kill", "-s", "KILL", "--kill-whom=main", UNIT)
    wait_until(lambda: service.main_pid() not in (0, first), 30, "systemd to restart it")
    assert_adopted_and_completed(service, before)


def test_a_wedged_daemon_is_restarted_by_the_watchdog(service: Service) -> None:
    start(service, dropin="[Service]\nWatchdogSec=2\nTimeoutAbortSec=2\n")
    before = two_running_runs(service)
    first = service.main_pid()
    service.systemctl("kill", "-s", "STOP", "--kill-whom=main", UNIT)
    wait_until(lambda: "Watchdog timeout" in service.journal(), 30, "the watchdog to fire")
    wait_until(lambda: service.main_pid() not in (0, first), 30, "systemd to restart it")
    assert_adopted_and_completed(service, before)


def test_cancel_leaves_only_the_daemon_in_the_cgroup(service: Service) -> None:
    start(service)
    run_id = service.submit(LONG_RUN)
    running_with_progress(service, run_id)
    assert len(service.cgroup_pids()) >= 3  # daemon, shim, simulation and its pool
    service.cancel(run_id)
    row = final(service, run_id, timeout=30)
    assert row["status"] == "CANCELLED"
    assert only_the_daemon_left(service), service.cgroup_pids()


def test_reload_raises_max_concurrent_runs_without_a_restart(service: Service) -> None:
    start(service, {"max_concurrent_runs": 1})
    daemon_pid = service.main_pid()
    first, second = service.submit(LONG_RUN), service.submit(LONG_RUN)
    running_with_progress(service, first)
    assert service.row(second)["status"] == "PENDING"
    settings = CONFIG_FILE.read_text()
    CONFIG_FILE.write_text(settings.replace("max_concurrent_runs = 1", "max_concurrent_runs = 2")
                           + 'on_shutdown = "terminate"\n')

    service.systemctl("reload", UNIT)

    running_with_progress(service, second)
    assert service.main_pid() == daemon_pid
    assert "action=reload key=max_concurrent_runs old=1 new=2" in service.journal()
    assert "action=reload_needs_restart keys=on_shutdown" in service.journal(priority="warning")
    for run_id in (first, second):
        service.cancel(run_id)
        assert final(service, run_id, timeout=30)["status"] == "CANCELLED"


def test_stop_with_terminate_fails_the_runs_and_empties_the_cgroup(service: Service) -> None:
    start(service, dropin="[Service]\nEnvironment=FUSION_RUNNER_ON_SHUTDOWN=terminate\n")
    before = two_running_runs(service)
    service.systemctl("stop", UNIT)
    # Within TimeoutStopSec: otherwise systemd would have killed it (Result=timeout).
    assert (service.show("ActiveState"), service.show("Result")) == ("inactive", "success")
    assert service.cgroup_pids() == []
    for run_id in before:
        row = service.row(run_id)
        assert (row["status"], row["error_message"]) == ("FAILED", "runner shut down")
        assert row["completed_at"] is not None


@pytest.mark.postgres
def test_a_postgresql_backed_daemon_under_the_unit(service: Service, pg_server: PgServer,
                                                   pg_url: str) -> None:
    service.database_url = pg_url
    start(service)
    import psycopg

    conninfo = pg_url.replace("postgresql+psycopg://", "postgresql://")

    def row(run_id: str) -> dict[str, Any]:
        with psycopg.connect(conninfo) as connection:
            cursor = connection.execute("SELECT status, completed_at, error_message "
                                        "FROM runs WHERE id = %s", (run_id,))
            status, completed_at, message = cursor.fetchone() or (None, None, None)
        return {"status": status, "completed_at": completed_at, "error_message": message}

    def submit(num_requests: int) -> str:
        run_id = os.urandom(6).hex()
        with psycopg.connect(conninfo) as connection:
            connection.execute(
                "INSERT INTO runs (id, name, status, config_json, template, created_at) "
                "VALUES (%s, 'pg', 'PENDING', %s, 'fusion_minimal.ini', %s)",
                (run_id, refsim_config(num_requests), utc_text()))
        return run_id

    completed, cancelled = submit(SHORT_RUN), submit(LONG_RUN)
    wait_until(lambda: row(completed)["completed_at"] is not None, 60, "the short run")
    assert row(completed)["status"] == "COMPLETED", row(completed)["error_message"]
    wait_until(lambda: row(cancelled)["status"] == "RUNNING", 60, "the long run to start")
    with psycopg.connect(conninfo) as connection:
        connection.execute("UPDATE runs SET status = 'CANCELLED' WHERE id = %s", (cancelled,))
    wait_until(lambda: row(cancelled)["completed_at"] is not None, 30, "the cancel")
    assert row(cancelled)["status"] == "CANCELLED"
    assert only_the_daemon_left(service), service.cgroup_pids()
