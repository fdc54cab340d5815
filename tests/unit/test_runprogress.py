"""runprogress: progress_source "file", "log" and "auto", and resuming after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion_runner.core.progress import Columns
from fusion_runner.core.rundir import RunPaths
from fusion_runner.daemon.runprogress import RunProgress

PREFIX = "2026-11-28 19:47:57,626 - fusion.core.simulation - INFO - "
NOTHING: Columns = dict.fromkeys(("current_erlang", "total_erlangs", "current_iteration",
                                  "total_iterations"))


@pytest.fixture
def paths(tmp_path: Path) -> RunPaths:
    paths = RunPaths.under(tmp_path, "0123456789ab")
    paths.log_file.parent.mkdir(parents=True)
    return paths


def log(paths: RunPaths, *messages: str) -> None:
    with paths.log_file.open("a") as file:
        file.writelines(f"{PREFIX}{message}\n" for message in messages)


def record(paths: RunPaths, *records: object) -> None:
    with paths.progress_file.open("a") as file:
        file.writelines(json.dumps(each) + "\n" for each in records)


def test_file_reads_the_file_alone(paths: RunPaths) -> None:
    progress = RunProgress.start(paths, "file")
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)", "Saving to: /out/s1")
    assert progress.poll() == {}
    record(paths, {"erlang": 100.0})
    assert progress.poll() == {"current_erlang": 100.0}
    assert (progress.log, progress.log_offset, progress.take_outputs()) == (None, None, [])


def test_log_reads_the_log_alone(paths: RunPaths) -> None:
    progress = RunProgress.start(paths, "log")
    record(paths, {"erlang": 100.0, "iteration": 1})
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)", "Saving to: /out/s1")
    assert progress.poll() == {"current_erlang": 300.0, "total_erlangs": 3}
    assert progress.take_outputs() == ["/out/s1"]
    assert progress.file_offset == 0  # never read
    assert progress.log_offset == paths.log_file.stat().st_size


def test_auto_follows_the_log_until_the_file_has_a_valid_line(paths: RunPaths) -> None:
    progress = RunProgress.start(paths, "auto")
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)")
    assert progress.poll() == {"current_erlang": 300.0, "total_erlangs": 3}
    record(paths)
    paths.progress_file.write_text("not json\n[1]\n")  # not valid lines: the log goes on
    log(paths, "Iteration 1 out of 4 completed for Erlang: 300.0")
    assert progress.poll() == {"current_iteration": 1, "total_iterations": 4}
    assert progress.log_live and progress.log_offset == paths.log_file.stat().st_size

    record(paths, {"iteration": 7})
    # The switch writes all four columns as the file has them.
    assert progress.poll() == NOTHING | {"current_iteration": 7}
    assert not progress.log_live and progress.log_offset is None
    log(paths, "Iteration 2 out of 4 completed for Erlang: 300.0", "Saving to: /out/s1")
    record(paths, {"erlang": 400.0})
    assert progress.poll() == {"current_erlang": 400.0}
    assert progress.poll() == {}
    assert progress.take_outputs() == []  # the log is not read on...
    progress.finish()
    assert progress.take_outputs() == ["/out/s1"]  # ...until the run has ended


def test_auto_with_a_file_from_the_start_never_applies_the_log(paths: RunPaths) -> None:
    progress = RunProgress.start(paths, "auto")
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)")
    record(paths, {"type": "start", "total_erlangs": 5})
    assert progress.poll() == NOTHING | {"total_erlangs": 5}


@pytest.mark.parametrize("source", ["auto", "log"])
def test_resume_goes_on_from_the_stored_log_offset(paths: RunPaths, source: str) -> None:
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)")
    first = RunProgress.start(paths, source)
    columns = NOTHING | first.poll()
    offset = first.log_offset
    # Bytes before the offset are never read again (here: rewritten in place).
    text = paths.log_file.read_text().replace("load 1/3", "load 1/9")
    paths.log_file.write_text(text)
    log(paths, "Iteration 1 out of 4 completed for Erlang: 300.0")

    resumed = RunProgress.resume(paths, source, columns, first.file_offset, offset)

    assert resumed.log_live
    assert resumed.poll() == {"current_iteration": 1, "total_iterations": 4}
    assert resumed.log is not None and resumed.log.progress.total_erlangs == 3


def test_resume_in_auto_after_the_file_took_over_reads_the_file_alone(paths: RunPaths) -> None:
    record(paths, {"erlang": 100.0})
    first = RunProgress.start(paths, "auto")
    columns = NOTHING | first.poll()
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)")
    record(paths, {"iteration": 2})

    resumed = RunProgress.resume(paths, "auto", columns, first.file_offset, first.log_offset)

    assert first.log_offset is None and not resumed.log_live
    assert resumed.poll() == {"current_iteration": 2}


def test_resume_with_nothing_stored_reads_both_from_the_start(paths: RunPaths) -> None:
    log(paths, "Starting simulation for 300.0 Erlang (load 1/3)")
    resumed = RunProgress.resume(paths, "auto", NOTHING, None, None)
    assert resumed.log_live
    assert resumed.poll() == {"current_erlang": 300.0, "total_erlangs": 3}
