"""Progress wake-ups with real inotify: once per change, not once per line."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from fusion_runner.daemon import inotify
from fusion_runner.daemon.wakeups import Reason, Wakeup, Wakeups
from fusion_runner.daemon.watches import FolderWatches


def append(folder: Path, name: str, text: str) -> None:
    with open(folder / name, "a") as file:
        file.write(text)


def make(tmp_path: Path) -> tuple[FolderWatches, list[str]]:
    woken: list[str] = []
    watches = FolderWatches(woken.append)
    watches.watch("run-a", tmp_path, {"progress.jsonl"})
    return watches, woken


def test_many_lines_wake_once_until_armed_again(tmp_path: Path) -> None:
    watches, woken = make(tmp_path)
    try:
        for n in range(100):
            append(tmp_path, "progress.jsonl", f'{{"iteration": {n}}}\n')
        watches.on_readable()
        assert woken == ["run-a"]

        watches.arm("run-a")
        append(tmp_path, "progress.jsonl", '{"iteration": 100}\n')
        watches.on_readable()
        assert woken == ["run-a", "run-a"]
    finally:
        watches.close()


def test_no_wakeup_without_a_change_and_none_after_unwatch(tmp_path: Path) -> None:
    watches, woken = make(tmp_path)
    try:
        watches.on_readable()
        assert woken == []
        watches.unwatch("run-a")
        append(tmp_path, "progress.jsonl", "{}\n")
        watches.on_readable()
        assert woken == []
    finally:
        watches.close()


def test_a_replaced_file_wakes_too(tmp_path: Path) -> None:
    watches, woken = make(tmp_path)
    try:
        (tmp_path / "new").write_text('{"iteration": 1}\n')
        watches.on_readable()  # the temporary file's own events
        watches.arm("run-a")
        woken.clear()
        (tmp_path / "new").replace(tmp_path / "progress.jsonl")
        watches.on_readable()
        assert woken == ["run-a"]
    finally:
        watches.close()


def test_parse_reads_every_event_of_a_batch() -> None:
    def event(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name))
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    data = event(1, inotify.IN_MODIFY, b"progress.jsonl") + event(2, inotify.IN_CREATE, b"x")

    assert inotify.parse(data) == [
        inotify.Event(1, inotify.IN_MODIFY, "progress.jsonl"),
        inotify.Event(2, inotify.IN_CREATE, "x"),
    ]


def test_without_inotify_a_polling_observer_wakes_once_per_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wakeups = Wakeups(use_inotify=False)
    try:
        with caplog.at_level(logging.WARNING, logger="fusion_runner"):
            wakeups.watch_progress("run-a", tmp_path / "progress.jsonl")
        assert "fallback=polling" in caplog.text

        for n in range(50):
            append(tmp_path, "progress.jsonl", f'{{"iteration": {n}}}\n')
        woken = wait_for_wakeups(wakeups)
        assert woken == [Wakeup(Reason.PROGRESS, "run-a")]

        wakeups.rearm_progress("run-a")
        append(tmp_path, "progress.jsonl", '{"iteration": 50}\n')
        assert wait_for_wakeups(wakeups) == [Wakeup(Reason.PROGRESS, "run-a")]
    finally:
        wakeups.unwatch_progress("run-a")
        wakeups.close()


def wait_for_wakeups(wakeups: Wakeups) -> list[Wakeup]:
    """What arrives within one wait of up to 5 s, plus anything right behind it."""
    woken = wakeups.wait(5.0)
    return woken + wakeups.wait(0.3)


@pytest.mark.parametrize("use_inotify", [True, False])
def test_a_runs_log_wakes_it_as_its_progress_until_unwatched(
    tmp_path: Path, use_inotify: bool
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "sim.log").touch()  # as the spawn leaves it before the watch
    wakeups = Wakeups(use_inotify=use_inotify)
    woken = [Wakeup(Reason.PROGRESS, "run-a")]
    try:
        wakeups.watch_progress("run-a", tmp_path / "progress.jsonl")
        wakeups.watch_log("run-a", logs / "sim.log")
        assert poke_until_woken(wakeups, logs, "sim.log") == woken

        wakeups.rearm_progress("run-a")  # re-arms the log's watch too
        assert poke_until_woken(wakeups, logs, "sim.log") == woken

        wakeups.rearm_progress("run-a")
        wakeups.unwatch_log("run-a")  # the file took over: only progress.jsonl wakes it
        append(logs, "sim.log", "more\n")
        assert wakeups.wait(0.3) == []
        assert poke_until_woken(wakeups, tmp_path, "progress.jsonl") == woken
    finally:
        wakeups.unwatch_progress("run-a")
        wakeups.close()


def poke_until_woken(wakeups: Wakeups, folder: Path, name: str) -> list[Wakeup]:
    """Append to the file until a wake-up comes (a polling observer may take its first
    look after the first append), then what else arrives right behind it."""
    for _ in range(20):
        append(folder, name, "more\n")
        if woken := wakeups.wait(0.25):
            return woken + wakeups.wait(0.3)
    return []


def test_a_change_while_another_file_had_used_up_the_shot_still_wakes(tmp_path: Path) -> None:
    """The one shot goes to another file of the folder; the progress line written before
    this thread reads that event and watches on raises no event of its own."""
    watches, woken = make(tmp_path)
    try:
        append(tmp_path, "pids", "123\n")  # the simulation's own file: the shot is gone
        append(tmp_path, "progress.jsonl", '{"iteration": 1}\n')  # unwatched
        watches.on_readable()
        assert woken == ["run-a"]

        watches.arm("run-a")
        append(tmp_path, "pids", "456\n")  # another file alone: no wake-up
        watches.on_readable()
        assert woken == ["run-a"]
    finally:
        watches.close()


def test_a_file_written_before_the_watch_began_wakes_once(tmp_path: Path) -> None:
    append(tmp_path, "progress.jsonl", '{"iteration": 1}\n')  # a quick simulation
    watches, woken = make(tmp_path)
    try:
        assert woken == ["run-a"]
        watches.on_readable()
        assert woken == ["run-a"]
    finally:
        watches.close()


def test_an_empty_file_there_before_the_watch_does_not_wake(tmp_path: Path) -> None:
    (tmp_path / "progress.jsonl").touch()  # as the spawn leaves a log before the watch
    watches, woken = make(tmp_path)
    try:
        watches.on_readable()
        assert woken == []
    finally:
        watches.close()
