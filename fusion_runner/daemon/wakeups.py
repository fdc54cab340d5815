"""Everything that wakes the main loop, funnelled into one queue.

Producers (one watcher thread for pidfds and inotify on the database's and the
runs' folders, watchdog's polling observer where inotify cannot watch, signal
handlers) only put a `Wakeup` on the queue;
the supervisor alone acts on it. The queue is a `SimpleQueue`, whose `put` is
reentrant and so safe inside a signal handler.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from fusion_runner.daemon.watches import FdWatchThread, FolderWatches

log = logging.getLogger("fusion_runner")
# The watch key of the database's folder (a run id is 12 hex characters).
DATABASE_KEY = "(database)"
# A run's log is in another folder (logs/): a watch of its own, under the run's
# id with this suffix, whose change wakes the loop as the run's progress.
LOG_KEY_SUFFIX = "+log"
_CHANGES = [FileModifiedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent]


class Reason(enum.Enum):
    DATABASE = "database"  # the database file changed: a client may have written
    EXIT = "exit"  # a run's shim ended
    STOP = "stop"  # SIGTERM / SIGINT
    HANGUP = "hangup"  # SIGHUP: what `systemctl reload` and log rotation send
    PROGRESS = "progress"  # a run's progress.jsonl or its log changed


@dataclass(frozen=True)
class Wakeup:
    reason: Reason
    key: str = ""


class WakeupSource(Protocol):
    """What the loop waits on, and the watches it asks for."""

    def wait(self, timeout: float) -> list[Wakeup]: ...
    def put(self, wakeup: Wakeup) -> None: ...  # safe from any thread and signal handler
    def catch_stop_signals(self, on_stop: Callable[[], None]) -> None: ...
    def watch_database(self, database_file: Path) -> None: ...
    def rearm_database(self) -> None: ...
    def watch_exit(self, key: str, pid: int) -> None: ...
    def watch_progress(self, run_id: str, progress_file: Path) -> None: ...
    def watch_log(self, run_id: str, log_file: Path) -> None: ...
    def rearm_progress(self, run_id: str) -> None: ...
    def unwatch_progress(self, run_id: str) -> None: ...
    def unwatch_log(self, run_id: str) -> None: ...
    def close(self) -> None: ...


class Wakeups:
    """The loop's one queue and the threads that feed it."""

    def __init__(self, *, use_inotify: bool = True) -> None:
        """`use_inotify=False` watches folders as on a file system without inotify."""
        self._queue: queue.SimpleQueue[Wakeup] = queue.SimpleQueue()
        # Used only for folders inotify cannot watch (watch limit, file system).
        self._polling: BaseObserver | None = None
        self._polled: dict[str, ObservedWatch] = {}
        self._exits = FdWatchThread(lambda key: self.put(Wakeup(Reason.EXIT, key)))
        self._progress = FolderWatches(self._changed, use_inotify=use_inotify)
        progress_fd = self._progress.fileno()
        # One warning for the fallback, whatever number of folders falls back: the
        # watch limit, once reached, would otherwise repeat it for every run.
        self._fallback_told = progress_fd is None and use_inotify  # FolderWatches told it
        if progress_fd is not None:
            self._exits.add_reader(progress_fd, self._progress.on_readable)

    def put(self, wakeup: Wakeup) -> None:
        self._queue.put(wakeup)

    def _changed(self, key: str) -> None:
        if key == DATABASE_KEY:
            self.put(Wakeup(Reason.DATABASE))
        else:
            self.put(Wakeup(Reason.PROGRESS, key.removesuffix(LOG_KEY_SUFFIX)))

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
        self._watch_folder(DATABASE_KEY, database_file.parent.resolve(), names)

    def rearm_database(self) -> None:
        """Call right before looking for clients' commits: the next write wakes us."""
        self._progress.arm(DATABASE_KEY)

    def watch_progress(self, run_id: str, progress_file: Path) -> None:
        """Wake with the run's id when its progress file changes; one watch per live run
        (on its folder: the file may not exist yet)."""
        self._watch_folder(run_id, progress_file.parent, {progress_file.name})

    def watch_log(self, run_id: str, log_file: Path) -> None:
        """Wake with the run's id when its log (FUSION's progress) changes: a second
        watch, only for runs whose log drives the progress columns."""
        self._watch_folder(run_id + LOG_KEY_SUFFIX, log_file.parent, {log_file.name})

    def rearm_progress(self, run_id: str) -> None:
        """Call right before reading a run's progress file or log: the next change wakes us."""
        self._progress.arm(run_id)
        self._progress.arm(run_id + LOG_KEY_SUFFIX)  # nearly free when the log is not watched

    def _watch_folder(self, key: str, folder: Path, names: set[str]) -> None:
        try:
            self._progress.watch(key, folder, names)
            return
        except OSError as error:
            if self._fallback_told:
                log.debug("action=folder_polled folder=%s error=%s", folder, error)
            else:
                log.warning("action=inotify_unavailable folder=%s error=%s fallback=polling",
                            folder, error)
                self._fallback_told = True
        handler = _NamedFileHandler(names, lambda: self._progress.notify(key))
        try:
            self._polled[key] = self._polling_observer().schedule(
                handler, str(folder), recursive=False, event_filter=_CHANGES
            )
            self._progress.watch_by_flag(key)
        except OSError as error:
            log.warning("action=watch_failed folder=%s error=%s", folder, error)

    def unwatch_progress(self, run_id: str) -> None:
        """Watch neither the run's progress file nor its log any more."""
        self._unwatch(run_id)
        self.unwatch_log(run_id)

    def unwatch_log(self, run_id: str) -> None:
        self._unwatch(run_id + LOG_KEY_SUFFIX)

    def _unwatch(self, key: str) -> None:
        self._progress.unwatch(key)
        watch = self._polled.pop(key, None)
        if watch is not None and self._polling is not None:
            # The folder may be gone already (a deleted run): nothing to stop then.
            with contextlib.suppress(KeyError, OSError):
                self._polling.unschedule(watch)

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
        # Its default action would end the daemon, silently and "successfully"
        # for systemd's Restart=on-failure: the loop logs it and goes on.
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self.put(Wakeup(Reason.HANGUP)))

    def close(self) -> None:
        if self._polling is not None:
            self._polling.stop()
            self._polling.join(timeout=2)
        self._exits.close()
        self._progress.close()


class _NamedFileHandler(FileSystemEventHandler):
    def __init__(self, names: Iterable[str], notify: Callable[[], None]) -> None:
        self._names = frozenset(names)
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, event.dest_path)
        if any(os.path.basename(os.fsdecode(path)) in self._names for path in paths if path):
            self._notify()
