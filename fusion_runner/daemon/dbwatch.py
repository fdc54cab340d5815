"""Whether the database changed, and whether someone else changed it: the loop asks
a `DatabaseWatch`, never the store's counters or the dialect.

SQLite (`SqliteWatch`): inotify on the database's file wakes the loop and
PRAGMA data_version tells others' commits from ours, exactly and nearly for free.
PostgreSQL (`PostgresWatch`): the `runs` trigger's NOTIFY (core/pgnotify.py),
heard by a LISTEN thread (pglisten.py), wakes the loop; between notifications
and fallback polls the loop issues no query at all. Without a listener
(it cannot connect) every look may find a change, as a plain poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from fusion_runner.core.config import sqlite_path
from fusion_runner.core.store import Store
from fusion_runner.daemon.wakeups import Reason, Wakeup, WakeupSource


class DatabaseWatch(Protocol):
    # Looks again this long after a wake-up by others (SQLite's inotify fires a
    # moment before the commit is visible).
    recheck_after: tuple[float, ...]

    @property
    def exact(self) -> bool:
        """Whether wake-ups announce every change: else the loop polls while runs live."""

    def changed_by_others(self) -> bool:
        """Call right before looking: whether anyone else may have committed since the
        last call; the next change after it wakes the loop."""

    def woken_by_others(self) -> bool:
        """After a database wake-up: False when it most likely was our own commit."""

    def close(self) -> None: ...


def watch_database(
    store: Store, database_url: str, wakeups: WakeupSource,
    clock: Callable[[], float], fallback_seconds: Callable[[], float],
) -> DatabaseWatch:
    """The watch that suits the database; the one place that looks at its kind."""
    sqlite_file = sqlite_path(database_url)
    if sqlite_file is not None:
        wakeups.watch_database(sqlite_file)
        return SqliteWatch(store, wakeups)
    return PostgresWatch(store, str(store.engine.url.render_as_string(hide_password=False)),
                         wakeups, clock, fallback_seconds)


class _OwnWrites:
    """Tells a wake-up caused by the daemon's own commit from one by a client's."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._writes_seen = store.writes

    def woken_by_others(self) -> bool:
        ours = self._store.writes != self._writes_seen
        self._writes_seen = self._store.writes
        return not ours


class SqliteWatch(_OwnWrites):
    # inotify fires when the writer appends to the WAL, a moment before its
    # commit is visible (after the writer's fsync, longer when it is
    # descheduled on a busy machine, by a tenth of a second and more): look again
    # after each of these; a look that finds nothing costs one PRAGMA, not a pass.
    recheck_after: tuple[float, ...] = (0.002, 0.008, 0.03, 0.1, 0.3)
    exact: bool = False  # a commit seen by inotify before it is visible: poll data_version too

    def __init__(self, store: Store, wakeups: WakeupSource) -> None:
        super().__init__(store)
        self._wakeups = wakeups

    def changed_by_others(self) -> bool:
        self._wakeups.rearm_database()  # before the look, so no later commit goes unseen
        return self._store.changed_by_others()

    def close(self) -> None: ...


class PostgresWatch(_OwnWrites):
    # A notification is sent at commit: what it announces is visible already.
    recheck_after: tuple[float, ...] = ()

    def __init__(
        self, store: Store, sqlalchemy_url: str, wakeups: WakeupSource,
        clock: Callable[[], float], fallback_seconds: Callable[[], float],
    ) -> None:
        from fusion_runner.daemon.pglisten import PgListener

        super().__init__(store)
        self._wakeups, self._clock, self._fallback = wakeups, clock, fallback_seconds
        self._lock = threading.Lock()
        self._notified = True  # the first look is a full one
        self._looked_at = float("-inf")
        self._listener = PgListener(sqlalchemy_url, self._on_change)
        self._listener.start()

    @property
    def exact(self) -> bool:
        return self._listener.healthy

    def _on_change(self) -> None:  # on the listener's thread
        with self._lock:
            self._notified = True
        self._wakeups.put(Wakeup(Reason.DATABASE))

    def changed_by_others(self) -> bool:
        now = self._clock()
        with self._lock:
            notified, self._notified = self._notified, False
        # The fallback poll: a look every poll_interval_seconds whatever was heard.
        due = now >= self._looked_at + self._fallback()
        if notified or due or not self._listener.healthy:
            self._looked_at = now
            return True
        return False

    def close(self) -> None:
        self._listener.close()
