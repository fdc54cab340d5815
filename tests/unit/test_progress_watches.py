"""Progress wake-ups with real inotify: once per change, not once per line."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from fusion_runner import inotify
from fusion_runner.wakeups import ProgressWatches, Reason, Wakeup, Wakeups


def append(folder: Path, name: str, text: str) -> None:
    with open(folder / name, "a") as file:
        file.write(text)


def make(tmp_path: Path) -> tuple[ProgressWatches, list[str]]:
    woken: list[str] = []
    watches = ProgressWatches(woken.append)
    watches.watch("run-a", tmp_path)
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
            wakeups.watch_progress("run-a", tmp_path)
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
