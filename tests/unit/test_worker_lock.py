"""fusion_runner.worker_lock on a real file and a real PostgreSQL server."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import pytest

from fusion_runner.core.errors import AlreadyRunning
from fusion_runner.daemon import worker_lock


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def names_us(error: pytest.ExceptionInfo[AlreadyRunning]) -> bool:
    return f"(pid {os.getpid()} on host {socket.gethostname()}, since " in str(error.value)


def test_second_lock_of_a_worker_id_is_refused_naming_the_holder(tmp_path: Path) -> None:
    # Two acquisitions are two open file descriptions: flock sees two holders.
    with worker_lock.acquire(sqlite_url(tmp_path), "w1"), pytest.raises(AlreadyRunning) as refused:
        worker_lock.acquire(sqlite_url(tmp_path), "w1")

    assert names_us(refused)
    message = str(refused.value)
    assert message.startswith("another fusion-runner daemon (pid ")
    assert message.endswith("already serves worker_id 'w1' on this database")
    assert "\n" not in message


def test_closing_releases_the_lock(tmp_path: Path) -> None:
    first = worker_lock.acquire(sqlite_url(tmp_path), "w1")
    first.close()
    first.close()  # twice is harmless
    worker_lock.acquire(sqlite_url(tmp_path), "w1").close()


def test_other_worker_ids_and_other_databases_do_not_conflict(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with (
        worker_lock.acquire(sqlite_url(tmp_path), "w1"),
        worker_lock.acquire(sqlite_url(tmp_path), "w2"),
        worker_lock.acquire(sqlite_url(tmp_path / "b"), "w1"),
    ):
        pass


def test_the_lock_file_lies_beside_the_database_and_names_its_holder(tmp_path: Path) -> None:
    with worker_lock.acquire(sqlite_url(tmp_path), "w1") as lock:
        assert isinstance(lock, worker_lock.FileLock)
        assert lock.path.parent == tmp_path.resolve()
        assert lock.path.name.startswith("runs.db.worker-w1-")
        assert f"pid={os.getpid()} host={socket.gethostname()} " in lock.path.read_text()


def test_a_simulation_never_inherits_the_lock(tmp_path: Path) -> None:
    with worker_lock.acquire(sqlite_url(tmp_path), "w1") as lock:
        assert isinstance(lock, worker_lock.FileLock) and lock.fd is not None
        assert fcntl.fcntl(lock.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_a_database_named_through_a_symlink_has_the_same_lock(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path)
    with worker_lock.acquire(sqlite_url(tmp_path), "w1"), pytest.raises(AlreadyRunning):
        worker_lock.acquire(sqlite_url(tmp_path / "link"), "w1")


@pytest.mark.parametrize("worker_id", ["a/b", "../x", "é", "x" * 300, "a:b*?"])
def test_any_worker_id_makes_a_safe_file_name(tmp_path: Path, worker_id: str) -> None:
    path = worker_lock.lock_file_path(tmp_path / "runs.db", worker_id)
    assert path.parent == tmp_path.resolve()
    assert len(path.name) < 100
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in path.name)


def test_worker_ids_that_read_alike_get_different_files(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    assert worker_lock.lock_file_path(database, "a/b") != worker_lock.lock_file_path(
        database, "a_b"
    )


def test_the_advisory_key_is_a_stable_signed_64_bit_integer() -> None:
    # Pinned: a changed derivation would let daemons of two versions both serve one id.
    assert worker_lock.advisory_key("test") == worker_lock.advisory_key("test")
    assert worker_lock.advisory_key("test") != worker_lock.advisory_key("tesu")
    keys = [worker_lock.advisory_key(f"w{n}") for n in range(200)]
    assert all(-(2**63) <= key < 2**63 for key in keys)
    assert any(key < 0 for key in keys)
    assert worker_lock.advisory_key("node-7") == 4752031405734679661


# --- PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_second_lock_is_refused_naming_the_holder(pg_url: str) -> None:
    with worker_lock.acquire(pg_url, "w1") as lock:
        assert isinstance(lock, worker_lock.AdvisoryLock)
        with pytest.raises(AlreadyRunning) as refused:
            worker_lock.acquire(pg_url, "w1")

    assert names_us(refused)
    assert str(refused.value).endswith("already serves worker_id 'w1' on this database")


@pytest.mark.postgres
def test_postgres_other_worker_ids_do_not_conflict(pg_url: str) -> None:
    with worker_lock.acquire(pg_url, "w1"), worker_lock.acquire(pg_url, "w2"):
        pass


@pytest.mark.postgres
def test_postgres_closing_releases_the_lock(pg_url: str) -> None:
    first = worker_lock.acquire(pg_url, "w1")
    first.close()
    first.close()
    worker_lock.acquire(pg_url, "w1").close()


@pytest.mark.postgres
def test_postgres_plain_url_and_psycopg_url_take_the_same_lock(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with worker_lock.acquire(pg_url, "w1"), pytest.raises(AlreadyRunning):
        worker_lock.acquire(plain, "w1")
