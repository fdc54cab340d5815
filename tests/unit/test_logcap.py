"""The log cap on real files: what is kept, the marker, a writer appending meanwhile,
a copy where the file system cannot collapse, and the progress reader moved along."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusion_runner.core import config
from fusion_runner.core.errors import ConfigError
from fusion_runner.core.fusionlog import LogReader
from fusion_runner.daemon import logcap, reload

SHM = Path("/dev/shm")  # tmpfs: no FALLOC_FL_COLLAPSE_RANGE, so the copy is used
LINE = 16  # bytes of each numbered line: "line 0000000042\n"
STARTING = (b"2026-01-01 10:00:00,000 - fusion - INFO - "
            b"Starting simulation for %s Erlang (load 1/3)\n")


def numbered(first: int, count: int) -> bytes:
    return b"".join(f"line {n:010d}\n".encode() for n in range(first, first + count))


def numbers(lines: list[bytes]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line]


def body(path: Path) -> tuple[int, int, list[bytes]]:
    """(the marker's length, the total it says, the lines after it)."""
    data = path.read_bytes()
    marker_bytes, total = logcap.read_marker(data[: logcap.MARKER_LIMIT])
    return marker_bytes, total, data[marker_bytes:].split(b"\n")


@pytest.fixture(params=["collapse", "copy"])
def log_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "collapse":
        return tmp_path
    folder = SHM / f"logcap-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    request.addfinalizer(lambda: shutil.rmtree(folder))
    return folder


def test_a_log_under_the_cap_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_bytes(numbered(0, 100))
    assert logcap.cap(log, 100 * LINE) is None
    assert log.read_bytes() == numbered(0, 100)


def test_a_log_past_the_cap_keeps_its_newest_half_from_a_line_start(log_dir: Path) -> None:
    log = log_dir / "sim.log"
    log.write_bytes(numbered(0, 10_000))
    cap = 4096 * 8
    cut = logcap.cap(log, cap)

    assert cut is not None and cut.how == ("copy" if log_dir.parent == SHM else "collapse")
    marker_bytes, total, lines = body(log)
    assert (marker_bytes, total) == (cut.marker_bytes, cut.dropped)
    kept = numbers(lines)
    assert kept == list(range(kept[0], 10_000))  # whole lines, the newest, in order
    assert total == kept[0] * LINE  # every byte before them counted as dropped
    assert cap // 2 <= log.stat().st_size - marker_bytes <= cap // 2 + LINE
    assert log.read_bytes().startswith(b"[fusion-runner: %d bytes of older output dropped "
                                       b"(max_log_bytes=32768)]" % total)


def test_the_total_dropped_adds_up_over_cuts(log_dir: Path) -> None:
    log = log_dir / "sim.log"
    written = 0
    for _ in range(5):
        with open(log, "ab") as out:
            out.write(numbered(written, 5_000))
        written += 5_000
        assert logcap.cap(log, 4096 * 8) is not None
    _, total, lines = body(log)
    kept = numbers(lines)
    assert kept == list(range(kept[0], written))
    assert total == kept[0] * LINE


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
n = 0
while not os.path.exists(sys.argv[2]):
    os.write(fd, b"".join(b"line %010d\\n" % i for i in range(n, n + 64)))
    n += 64
print(n)
"""


def test_a_writer_appending_meanwhile_loses_nothing_and_leaves_no_hole(tmp_path: Path) -> None:
    """O_APPEND: every write lands after what was kept; collapse drops no byte written."""
    log, stop = tmp_path / "sim.log", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(stop)],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        cuts = []
        while len(cuts) < 20:
            if (cut := logcap.cap(log, 4096 * 16)) is not None:
                cuts.append(cut)
        stop.touch()
        written = int(writer.communicate(timeout=30)[0])
    finally:
        writer.kill()
        writer.wait()
    assert {cut.how for cut in cuts} == {"collapse"}
    _, total, lines = body(log)
    assert b"\0" not in log.read_bytes()
    kept = numbers(lines)
    assert kept == list(range(kept[0], written))
    assert total == kept[0] * LINE


def test_only_the_runs_own_file_is_cut(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(numbered(0, 10_000))
    linked = tmp_path / "sim.log"
    linked.symlink_to(elsewhere)
    with pytest.raises(OSError):
        logcap.cap(linked, 8192)
    linked.unlink()
    os.link(elsewhere, linked)  # a hard link: another name of a file it could write
    assert logcap.cap(linked, 8192) is None
    assert elsewhere.read_bytes() == numbered(0, 10_000)
    assert logcap.cap(tmp_path / "gone.log", 8192) is None


def test_the_log_reader_reads_on_after_a_cut_without_losing_its_progress(
    tmp_path: Path,
) -> None:
    log = tmp_path / "sim.log"
    start = STARTING % b"300.0"
    log.write_bytes(start + numbered(0, 10_000))
    reader = LogReader(log)
    assert reader.poll()["current_erlang"] == 300.0
    cut = logcap.cap(log, 4096 * 8)
    assert cut is not None
    reader.shift(cut.kept_from, cut.marker_bytes)
    assert reader.offset == log.stat().st_size  # where it was, in the cut file
    with open(log, "ab") as out:
        out.write(STARTING % b"600.0")
    assert reader.poll() == {"current_erlang": 600.0}  # nothing else changed, nothing lost
    assert reader.take_problems() == []


def test_a_reader_behind_the_cut_reads_on_from_what_was_kept(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_bytes(STARTING % b"300.0")
    reader = LogReader(log)
    reader.poll()
    with open(log, "ab") as out:
        out.write(numbered(0, 10_000) + STARTING % b"600.0")
    cut = logcap.cap(log, 4096 * 8)
    assert cut is not None
    reader.shift(cut.kept_from, cut.marker_bytes)
    assert reader.poll() == {"current_erlang": 600.0}
    assert reader.offset == log.stat().st_size


def test_max_log_bytes_is_a_setting_with_a_floor_and_an_off() -> None:
    assert config.Config().max_log_bytes == 256 * 1024 * 1024
    assert config.load(environ={"FUSION_RUNNER_MAX_LOG_BYTES": "0"}).max_log_bytes == 0
    assert config.load({"max_log_bytes": "4096"}, environ={}).max_log_bytes == 4096
    with pytest.raises(ConfigError, match=r"^max_log_bytes: .* got '100' \(from --max-log-bytes\)"):
        config.load({"max_log_bytes": "100"}, environ={})
    assert "max_log_bytes" in reload.RELOADABLE
