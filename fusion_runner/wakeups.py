"""Everything that wakes the main loop, funnelled into one queue.

Producers (watchdog's thread for the database file, one watcher thread for
pidfds and progress files, signal handlers) only put a `Wakeup` on the queue;
the supervisor alone acts on it. The queue is a `SimpleQueue`, whose `put` is
reentrant and so safe inside a signal handler.
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

from fusion_runner import inotify

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

    def __init__(self, *, use_inotify: bool = True) -> None:
        """`use_inotify=False` watches progress files as on a file system without inotify."""
        self._queue: queue.SimpleQueue[Wakeup] = queue.SimpleQueue()
        self._observer: BaseObserver = Observer()
        self._observer.daemon = True
        self._observer.start()
        # Used only for folders inotify cannot watch (watch limit, file system).
        self._polling: BaseObserver | None = None
        self._polled: dict[str, ObservedWatch] = {}
        self._exits = ExitWatcher(lambda key: self.put(Wakeup(Reason.EXIT, key)))
        self._progress = ProgressWatches(
            lambda key: self.put(Wakeup(Reason.PROGRESS, key)), use_inotify=use_inotify
        )
        progress_fd = self._progress.fileno()
        if progress_fd is not None:
            self._exits.add_reader(progress_fd, self._progress.on_readable)

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
        try:
            self._progress.watch(run_id, run_dir)
            return
        except OSError as error:
            log.warning("action=inotify_unavailable folder=%s error=%s fallback=polling",
                        run_dir, error)
        handler = _NamedFileHandler({PROGRESS_FILE}, lambda: self._progress.notify(run_id))
        try:
            self._polled[run_id] = self._polling_observer().schedule(
                handler, str(run_dir), recursive=False, event_filter=_CHANGES
            )
            self._progress.watch_by_flag(run_id)
        except OSError as error:
            log.warning("action=watch_failed folder=%s error=%s", run_dir, error)

    def rearm_progress(self, run_id: str) -> None:
        """Call right before reading a run's progress file: its next change wakes us."""
        self._progress.arm(run_id)

    def unwatch_progress(self, run_id: str) -> None:
        self._progress.unwatch(run_id)
        watch = self._polled.pop(run_id, None)
        if watch is not None and self._polling is not None:
            # The folder may be gone already (a deleted run): nothing to stop then.
            with contextlib.suppress(KeyError, OSError):
                self._polling.unschedule(watch)

    def _schedule(self, handler: FileSystemEventHandler, folder: Path) -> None:
        try:
            self._observer.schedule(handler, str(folder), recursive=False, event_filter=_CHANGES)
            return
        except OSError as error:
            log.warning("action=inotify_unavailable folder=%s error=%s fallback=polling",
                        folder, error)
        try:
            self._polling_observer().schedule(
                handler, str(folder), recursive=False, event_filter=_CHANGES
            )
        except OSError as error:
            log.warning("action=watch_failed folder=%s error=%s", folder, error)

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
        self._progress.close()


class _NamedFileHandler(FileSystemEventHandler):
    def __init__(self, names: Iterable[str], notify: Callable[[], None]) -> None:
        self._names = frozenset(names)
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, event.dest_path)
        if any(os.path.basename(os.fsdecode(path)) in self._names for path in paths if path):
            self._notify()


class ExitWatcher:
    """One thread waiting on pidfds (a process end becomes a call of `notify(key)`)
    and on readers added with `add_reader` (the progress files' inotify).

    A pidfd works for processes that are not our children (adopted after a
    restart) and never refers to a reused pid.
    """

    def __init__(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._added: list[tuple[str | Callable[[], None], int]] = []
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

    def add_reader(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Call `on_readable()` in this thread whenever `fd` is readable (fd stays ours)."""
        with self._lock:
            self._added.append((on_readable, fd))
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
                elif callable(selected.data):
                    selected.data()
                else:
                    self._selector.unregister(selected.fd)
                    os.close(selected.fd)
                    self._notify(selected.data)
        for selected in list(self._selector.get_map().values()):
            if not callable(selected.data):
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
        for data, fd in added:
            self._selector.register(fd, selectors.EVENT_READ, data)


class ProgressWatches:
    """inotify on live runs' folders: a change of progress.jsonl wakes the loop once,
    then not again until the loop is about to read the file (`arm`).

    Each watch is one-shot (IN_ONESHOT) and `arm` adds it again, so a simulation
    writing a thousand lines a second costs about one event per read, not one
    per line. The fallback (a polling observer) uses the same arming by flag.
    """

    def __init__(self, notify: Callable[[str], None], *, use_inotify: bool = True) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._folders: dict[str, str] = {}  # run id -> folder watched by inotify
        self._run_of: dict[int, str] = {}  # armed watch descriptor -> run id
        self._armed: dict[str, bool] = {}  # runs on the fallback observer
        self._inotify: inotify.Inotify | None = None
        if use_inotify:
            try:
                self._inotify = inotify.Inotify()
            except OSError as error:
                log.warning("action=inotify_unavailable error=%s fallback=polling", error)

    def fileno(self) -> int | None:
        return None if self._inotify is None else self._inotify.fileno()

    def watch(self, run_id: str, folder: Path) -> None:
        """Raises OSError when inotify cannot watch it (watch limit, file system)."""
        if self._inotify is None:
            raise OSError("inotify is not available")
        self._add(run_id, str(folder))
        with self._lock:
            self._folders[run_id] = str(folder)

    def watch_by_flag(self, run_id: str) -> None:
        with self._lock:
            self._armed[run_id] = True

    def unwatch(self, run_id: str) -> None:
        with self._lock:
            self._folders.pop(run_id, None)
            self._armed.pop(run_id, None)
            for wd in [wd for wd, run in self._run_of.items() if run == run_id]:
                del self._run_of[wd]
                if self._inotify is not None:
                    self._inotify.unwatch(wd)

    def arm(self, run_id: str) -> None:
        with self._lock:
            folder = self._folders.get(run_id)
            if run_id in self._armed:
                self._armed[run_id] = True
        if folder is not None:
            with contextlib.suppress(OSError):  # the folder is gone: so is the run
                self._add(run_id, folder)

    def notify(self, run_id: str) -> None:
        """From the fallback observer: wake once until armed again."""
        with self._lock:
            if not self._armed.get(run_id):
                return
            self._armed[run_id] = False
        self._notify(run_id)

    def on_readable(self) -> None:
        assert self._inotify is not None
        while events := self._inotify.read():
            for event in events:
                if event.mask & inotify.IN_Q_OVERFLOW:
                    for run_id in list(self._folders):
                        self._notify(run_id)
                    continue
                with self._lock:
                    # A one-shot watch fires once; `arm` adds it again.
                    changed = self._run_of.pop(event.wd, "")
                if changed:
                    self._notify(changed)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def _add(self, run_id: str, folder: str) -> None:
        assert self._inotify is not None
        # Under the lock: an event on the new watch must find it in `_run_of`.
        with self._lock:
            # Adding a watch that exists already returns the same descriptor.
            wd = self._inotify.watch_folder(folder, inotify.FILE_CHANGES | inotify.IN_ONESHOT)
            self._run_of[wd] = run_id
