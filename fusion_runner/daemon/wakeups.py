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
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from fusion_runner.daemon import inotify

log = logging.getLogger("fusion_runner")
PROGRESS_FILE = "progress.jsonl"
LOG_FILE = "sim.log"
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


class Wakeups:
    """The loop's one queue and the threads that feed it."""

    def __init__(self, *, use_inotify: bool = True) -> None:
        """`use_inotify=False` watches folders as on a file system without inotify."""
        self._queue: queue.SimpleQueue[Wakeup] = queue.SimpleQueue()
        # Used only for folders inotify cannot watch (watch limit, file system).
        self._polling: BaseObserver | None = None
        self._polled: dict[str, ObservedWatch] = {}
        self._exits = ExitWatcher(lambda key: self.put(Wakeup(Reason.EXIT, key)))
        self._progress = ProgressWatches(self._changed, use_inotify=use_inotify)
        progress_fd = self._progress.fileno()
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

    def watch_progress(self, run_id: str, run_dir: Path) -> None:
        """Wake with the run's id when its progress file changes; one watch per live run."""
        self._watch_folder(run_id, run_dir, {PROGRESS_FILE})

    def watch_log(self, run_id: str, log_dir: Path) -> None:
        """Wake with the run's id when its log (FUSION's progress) changes: a second
        watch, only for runs whose log drives the progress columns."""
        self._watch_folder(run_id + LOG_KEY_SUFFIX, log_dir, {LOG_FILE})

    def rearm_progress(self, run_id: str) -> None:
        """Call right before reading a run's progress file or log: the next change wakes us."""
        self._progress.arm(run_id)
        self._progress.arm(run_id + LOG_KEY_SUFFIX)  # nearly free when the log is not watched

    def _watch_folder(self, key: str, folder: Path, names: set[str]) -> None:
        try:
            self._progress.watch(key, folder, names)
            return
        except OSError as error:
            log.warning("action=inotify_unavailable folder=%s error=%s fallback=polling",
                        folder, error)
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
        # Only now: the thread may see `_closed` and stop before reading the pipe.
        for selected in list(self._selector.get_map().values()):
            if isinstance(selected.data, str):  # a pidfd
                os.close(selected.fd)
        self._selector.close()
        os.close(self._wake_read)
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
    """inotify on folders, each under a key (a run id, or the database's): a change
    of one of the key's files wakes the loop once, then not again until the loop
    is about to look (`arm`).

    Each watch is one-shot (IN_ONESHOT) and `arm` adds it again, so a simulation
    writing a thousand lines a second costs about one event per read, not one
    per line. The fallback (a polling observer) uses the same arming by flag.
    """

    def __init__(self, notify: Callable[[str], None], *, use_inotify: bool = True) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._folders: dict[str, tuple[str, frozenset[str]]] = {}  # key -> folder, names
        self._key_of: dict[int, str] = {}  # armed watch descriptor -> key
        self._armed: dict[str, bool] = {}  # keys on the fallback observer
        self._inotify: inotify.Inotify | None = None
        if use_inotify:
            try:
                self._inotify = inotify.Inotify()
            except OSError as error:
                log.warning("action=inotify_unavailable error=%s fallback=polling", error)

    def fileno(self) -> int | None:
        return None if self._inotify is None else self._inotify.fileno()

    def watch(self, key: str, folder: Path, names: Iterable[str] = (PROGRESS_FILE,)) -> None:
        """Raises OSError when inotify cannot watch it (watch limit, file system)."""
        if self._inotify is None:
            raise OSError("inotify is not available")
        self._add(key, str(folder))
        with self._lock:
            self._folders[key] = (str(folder), frozenset(names))

    def watch_by_flag(self, key: str) -> None:
        with self._lock:
            self._armed[key] = True

    def unwatch(self, key: str) -> None:
        with self._lock:
            self._folders.pop(key, None)
            self._armed.pop(key, None)
            for wd in [wd for wd, watched in self._key_of.items() if watched == key]:
                del self._key_of[wd]
                if self._inotify is not None:
                    self._inotify.unwatch(wd)

    def arm(self, key: str) -> None:
        with self._lock:
            folder = self._folders.get(key)
            if key in self._armed:
                self._armed[key] = True
        if folder is not None:
            with contextlib.suppress(OSError):  # the folder is gone: so is the run
                self._add(key, folder[0])

    def notify(self, key: str) -> None:
        """From the fallback observer: wake once until armed again."""
        with self._lock:
            if not self._armed.get(key):
                return
            self._armed[key] = False
        self._notify(key)

    def on_readable(self) -> None:
        assert self._inotify is not None
        while events := self._inotify.read():
            for event in events:
                if event.mask & inotify.IN_Q_OVERFLOW:
                    for key in list(self._folders):
                        self._notify(key)
                    continue
                with self._lock:
                    # A one-shot watch fires once; `arm` adds it again.
                    key = self._key_of.pop(event.wd, "")
                    folder, names = self._folders.get(key, ("", frozenset()))
                if key and event.name in names:
                    self._notify(key)
                elif key:
                    # Another file of the folder used up the one shot: watch on.
                    with contextlib.suppress(OSError):
                        self._add(key, folder)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def _add(self, key: str, folder: str) -> None:
        assert self._inotify is not None
        # Under the lock: an event on the new watch must find it in `_key_of`.
        with self._lock:
            # Adding a watch that exists already returns the same descriptor.
            wd = self._inotify.watch_folder(folder, inotify.FILE_CHANGES | inotify.IN_ONESHOT)
            self._key_of[wd] = key
