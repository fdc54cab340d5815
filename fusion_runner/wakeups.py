"""Everything that wakes the main loop, funnelled into one queue.

Producers (watchdog's thread, the exit watcher thread, signal handlers) only
put a `Wakeup` on the queue; the supervisor alone acts on it. The queue is a
`SimpleQueue`, whose `put` is reentrant and so safe inside a signal handler.
"""

from __future__ import annotations

import enum
import os
import queue
import selectors
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver


class Reason(enum.Enum):
    DATABASE = "database"  # the database file changed: a client may have written
    EXIT = "exit"  # a run's shim ended
    STOP = "stop"  # SIGTERM / SIGINT
    WAKE = "wake"  # anything else worth a pass


@dataclass(frozen=True)
class Wakeup:
    reason: Reason
    key: str = ""


class Wakeups:
    """The loop's one queue and the threads that feed it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Wakeup] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        self._exits = ExitWatcher(lambda key: self.put(Wakeup(Reason.EXIT, key)))

    def put(self, wakeup: Wakeup) -> None:
        self._queue.put(wakeup)

    def wait(self, timeout: float) -> list[Wakeup]:
        """Block until a wake-up or `timeout` seconds; return all that are queued."""
        try:
            woken = [self._queue.get(timeout=max(timeout, 0.0))]
        except queue.Empty:
            return []
        while True:
            try:
                woken.append(self._queue.get_nowait())
            except queue.Empty:
                return woken

    def watch_database(self, database_file: Path) -> None:
        """Wake on writes to a SQLite file or its WAL, watching its folder only."""
        folder = database_file.parent.resolve()
        names = {database_file.name, f"{database_file.name}-wal"}
        handler = _NamedFileHandler(names, lambda: self.put(Wakeup(Reason.DATABASE)))
        self._observer = Observer()
        self._observer.schedule(
            handler, str(folder), recursive=False,
            event_filter=[FileModifiedEvent, FileCreatedEvent, FileMovedEvent,
                          FileDeletedEvent, FileClosedEvent],
        )
        self._observer.daemon = True
        self._observer.start()

    def watch_exit(self, key: str, pid: int) -> None:
        """Wake with `key` when process `pid` ends (it need not be our child)."""
        self._exits.watch(key, pid)

    def catch_stop_signals(self, on_stop: Callable[[], None]) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            on_stop()
            self.put(Wakeup(Reason.STOP))

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, handler)

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
        self._exits.close()


class _NamedFileHandler(FileSystemEventHandler):
    def __init__(self, names: Iterable[str], notify: Callable[[], None]) -> None:
        self._names = frozenset(names)
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, event.dest_path)
        if any(os.path.basename(os.fsdecode(path)) in self._names for path in paths if path):
            self._notify()


class ExitWatcher:
    """One thread waiting on pidfds: a process end becomes a call of `notify(key)`.

    A pidfd works for processes that are not our children (adopted after a
    restart) and never refers to a reused pid.
    """

    def __init__(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._added: list[tuple[str, int]] = []
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="exit-watcher", daemon=True)
        self._thread.start()

    def watch(self, key: str, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._notify(key)
            return
        with self._lock:
            self._added.append((key, pidfd))
        os.write(self._wake_write, b".")

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_write, b".")
        self._thread.join(timeout=2)
        os.close(self._wake_write)

    def _run(self) -> None:
        while not self._closed:
            for selected, _ in self._selector.select():
                if selected.data is None:
                    self._take_added()
                else:
                    self._selector.unregister(selected.fd)
                    os.close(selected.fd)
                    self._notify(selected.data)
        for selected in list(self._selector.get_map().values()):
            os.close(selected.fd)
        self._selector.close()

    def _take_added(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            added, self._added = self._added, []
        for key, pidfd in added:
            self._selector.register(pidfd, selectors.EVENT_READ, key)
