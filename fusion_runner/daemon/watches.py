"""The watches behind the wake-ups: one thread waiting on file descriptors (pidfds,
inotify), and one-shot inotify watches of folders (runs' files, the database's)."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from fusion_runner.daemon import inotify

log = logging.getLogger("fusion_runner")


class FdWatchThread:
    """One thread waiting on file descriptors: pidfds (a process end becomes a call
    of `notify(key)`) and readers added with `add_reader` (the folders' inotify).

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


# What a watched file looked like (None: absent): a change shows in one of these.
FileState = tuple[int, int, int, int] | None  # st_dev, st_ino, st_size, st_mtime_ns


class FolderWatches:
    """One-shot inotify on folders, each under a key (a run id, or the database's): a change
    of one of the key's files wakes the loop once, then not again until the loop
    is about to look (`arm`).

    Each watch is one-shot (IN_ONESHOT) and `arm` adds it again, so a simulation
    writing a thousand lines a second costs about one event per read, not one
    per line. The fallback (a polling observer) uses the same arming by flag.

    A change of another file of the folder uses up the one shot too, and the
    watch is added again only once this thread has read that event: a key's file
    changed in between raises no event. So each add of a watch notes the state
    of the key's files, and the add after another file's event compares: a
    difference wakes the loop as an event would have.
    """

    def __init__(self, notify: Callable[[str], None], *, use_inotify: bool = True) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._folders: dict[str, tuple[str, frozenset[str]]] = {}  # key -> folder, names
        self._key_of: dict[int, str] = {}  # armed watch descriptor -> key
        self._wd_of: dict[str, int] = {}  # key -> its armed watch descriptor
        # key -> its files' states when its watch was last added
        self._seen: dict[str, tuple[FileState, ...]] = {}
        self._armed: dict[str, bool] = {}  # keys on the fallback observer
        self._inotify: inotify.Inotify | None = None
        if use_inotify:
            try:
                self._inotify = inotify.Inotify()
            except OSError as error:
                log.warning("action=inotify_unavailable error=%s fallback=polling", error)

    def fileno(self) -> int | None:
        return None if self._inotify is None else self._inotify.fileno()

    def watch(self, key: str, folder: Path, names: Iterable[str]) -> None:
        """Raises OSError when inotify cannot watch it (watch limit, file system)."""
        if self._inotify is None:
            raise OSError("inotify is not available")
        # Known before the watch exists: its first event must find the key's names.
        with self._lock:
            self._folders[key] = (str(folder), frozenset(names))
        try:
            self._add(key)
        except OSError:
            with self._lock:
                self._folders.pop(key, None)
            raise
        # Written before the watch began (a quick simulation, or a run adopted after a
        # restart): no event tells of it, so wake the loop once to read it.
        with self._lock:
            written = any(state is not None and state[2] > 0 for state in self._seen[key])
        if written:
            self._notify(key)

    def watch_by_flag(self, key: str) -> None:
        with self._lock:
            self._armed[key] = True

    def unwatch(self, key: str) -> None:
        with self._lock:
            self._folders.pop(key, None)
            self._seen.pop(key, None)
            self._armed.pop(key, None)
            self._wd_of.pop(key, None)
            for wd in [wd for wd, watched in self._key_of.items() if watched == key]:
                del self._key_of[wd]
                if self._inotify is not None:
                    self._inotify.unwatch(wd)

    def arm(self, key: str) -> None:
        with self._lock:
            if key in self._armed:
                self._armed[key] = True
            if key in self._wd_of:
                return  # its one shot not fired yet: a change from now on still raises it
        # What changed before this add is read by the look that follows it.
        with contextlib.suppress(OSError):  # the folder is gone: so is the run
            self._add(key)

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
                    with self._lock:  # which shots fired is lost: each arm adds again
                        self._key_of.clear()
                        self._wd_of.clear()
                    for key in list(self._folders):
                        self._notify(key)
                    continue
                with self._lock:
                    # A one-shot watch fires once; `arm` adds it again.
                    key = self._key_of.pop(event.wd, "")
                    if self._wd_of.get(key) == event.wd:
                        del self._wd_of[key]
                    _folder, names = self._folders.get(key, ("", frozenset()))
                if key and event.name in names:
                    self._notify(key)
                elif key:
                    self._watch_on(key)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def _watch_on(self, key: str) -> None:
        """Another file of the folder used up the one shot: watch on, and wake the loop
        if one of the key's files changed while nothing watched it."""
        try:
            changed = self._add(key)
        except OSError:
            return  # the folder is gone: so is the run
        if changed:
            self._notify(key)

    def _add(self, key: str) -> bool:
        """Add the key's one-shot watch (again); whether its files changed since the last add."""
        # Under the lock: an event on the new watch must find it in `_key_of`, and
        # the states noted must be those of this add, not of one running meanwhile.
        with self._lock:
            if key not in self._folders or self._inotify is None:
                return False  # unwatched meanwhile, or watched by the fallback
            folder, names = self._folders[key]
            # Adding a watch that exists already returns the same descriptor.
            wd = self._inotify.watch_folder(folder, inotify.FILE_CHANGES | inotify.IN_ONESHOT)
            self._key_of[wd] = key
            self._wd_of[key] = wd
            # After the add: a change from here on raises an event or shows in the next add.
            states = tuple(_file_state(os.path.join(folder, name)) for name in sorted(names))
            before = self._seen.get(key, states)
            self._seen[key] = states
        return states != before


def _file_state(path: str) -> FileState:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
