"""The LISTEN side of PostgreSQL's wake-up (core/pgnotify.py): a thread with a
connection of its own that turns each notification into a call.

The connection is kept apart from the store's pool (a pooled connection is
returned and reused; a listening one must stay). When it breaks (the server
restarts, the network goes) the thread connects again, with backoff, and says
so: until it is back, and once right after, the loop must look at the table
itself, since notifications sent meanwhile are lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

from fusion_runner.core.pgnotify import CHANNEL

log = logging.getLogger("fusion_runner")
# How long one wait for notifications lasts: how soon `close` is noticed.
WAIT_SECONDS = 0.5
RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
CONNECT_TIMEOUT = 5


def conninfo(sqlalchemy_url: str) -> str:
    """libpq's URI for the same database as SQLAlchemy's `postgresql+psycopg://` URL."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PgListener:
    """LISTEN on CHANNEL; `on_change()` after each notification and after each
    (re)connection, `healthy` while connected."""

    def __init__(self, sqlalchemy_url: str, on_change: Callable[[], None]) -> None:
        self._conninfo = conninfo(sqlalchemy_url)
        self._on_change = on_change
        self._closed = threading.Event()
        self.healthy = False
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=WAIT_SECONDS + 1)

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                self._listen()
                failures = 0
            except psycopg.Error as error:
                if self.healthy or failures == 0:
                    log.warning("action=listen_lost error=%s fallback=polling",
                                str(error).strip().splitlines()[0] if str(error) else error)
                self.healthy = False
                self._on_change()  # look at the table: a notification may be lost
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                self._closed.wait(delay)

    def _listen(self) -> None:
        # A dead peer is noticed by TCP keepalives, since a listener sends nothing.
        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                             keepalives=1, keepalives_idle=5, keepalives_interval=2,
                             keepalives_count=3) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            if not self.healthy:
                log.info("action=listening channel=%s", CHANNEL)
            self.healthy = True
            self._on_change()  # whatever committed before LISTEN took effect
            while not self._closed.is_set():
                for _ in connection.notifies(timeout=WAIT_SECONDS):
                    self._on_change()
