"""Everything that wakes the main loop, funnelled into one queue.

Producers (watchdog's thread, the exit watcher thread, signal handlers) only
put a `Wakeup` on the queue; the supervisor alone acts on it. The queue is a
`SimpleQueue`, whose `put` is reentrant and so safe inside a signal handler.
"""

from __future__ import annotations

import contextlib
import enum
import logging
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
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

log = logging.getLogger("fusion_runner")
PROGRESS_FILE = "progress.jsonl"
_CHANGES = [FileModifiedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent]


class Reason(enum.Enum):
    DATABASE = "database"  # the database file changed: a client may have written
    EXIT = "exit"  # a run's shim ended
    STOP = "stop"  # SIGTERM / SIGINT
    PROGRESS = "progress"  # a run's progress.jsonl changed
    WAKE = "wake"  # anything else worth a pass


@dataclass(frozen=True)
class Wakeup:
    reason: Reason
    key: str = ""


class Wakeups:
    """The loop's one queue and the threads that feed it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Wakeup] = queue.SimpleQueue()
        self._observer: BaseObserver = Observer()
        self._observer.daemon = True
        self._observer.start()
        # Used only for folders inotify cannot watch (watch limit, file system).
        self._polling: BaseObserver | None = None
        self._progress_watches: dict[str, tuple[BaseObserver, ObservedWatch]] = {}
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
        names = {database_file.name, f"{database_file.name}-wal"}
        handler = _NamedFileHandler(names, lambda: self.put(Wakeup(Reason.DATABASE)))
        self._schedule(handler, database_file.parent.resolve())

    def watch_progress(self, run_id: str, run_dir: Path) -> None:
        """Wake with the run's id when its progress file changes; one watch per live run."""
        if run_id in self._progress_watches:
            return
        notify = lambda: self.put(Wakeup(Reason.PROGRESS, run_id))  # noqa: E731
        watch = self._schedule(_NamedFileHandler({PROGRESS_FILE}, notify), run_dir)
        if watch is not None:
            self._progress_watches[run_id] = watch

    def unwatch_progress(self, run_id: str) -> None:
        observer_and_watch = self._progress_watches.pop(run_id, None)
        if observer_and_watch is not None:
            observer, watch = observer_and_watch
            # The folder may be gone already (a deleted run): nothing to stop then.
            with contextlib.suppress(KeyError, OSError):
                observer.unschedule(watch)

    def _schedule(
        self, handler: FileSystemEventHandler, folder: Path
    ) -> tuple[BaseObserver, ObservedWatch] | None:
        try:
            watch = self._observer.schedule(
                handler, str(folder), recursive=False, event_filter=_CHANGES
            )
            return self._observer, watch
        except OSError as error:
            log.warning("action=inotify_unavailable folder=%s error=%s fallback=polling",
                        folder, error)
        try:
            return self._polling_observer(), self._polling_observer().schedule(
                handler, str(folder), recursive=False, event_filter=_CHANGES
            )
        except OSError as error:
            log.warning("action=watch_failed folder=%s error=%s", folder, error)
            return None

    def _polling_observer(self) -> BaseObserver:
        if self._polling is None:
            self._polling = PollingObserver(timeout=0.1)
            self._polling.daemon = True
            self._polling.start()
        return self._polling

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
        for observer in (self._observer, self._polling):
            if observer is not None:
                observer.stop()
                observer.join(timeout=2)
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
