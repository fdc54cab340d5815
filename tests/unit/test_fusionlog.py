"""fusionlog: FUSION's own log -> progress columns and result folders (SPEC §5).

The captured log of a real FUSION run (../shared/data/fusion-real/sim.log) is
replayed line by line and in random chunks; what the reader says after each
complete line is checked against a deliberately naive reading of the same lines.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_runner.core.fusionlog import MAX_OUTPUTS, LogLine, LogReader, parse_log_line
from fusion_runner.core.progress import MAX_LINE_BYTES, PROGRESS_COLUMNS, Columns, Progress

# CI has ../shared beside the checkout.
REAL_LOG = (Path(__file__).resolve().parents[2].parent
            / "shared" / "data" / "fusion-real" / "sim.log")
REAL_OUTPUT = "/home/researcher/FUSION/data/output/NSFNet/1128/19_47_57_507151/s1"
PREFIX = "2026-11-28 19:47:57,626 - fusion.core.simulation - INFO - "


def real_log() -> bytes:
    if not REAL_LOG.is_file():
        pytest.fail(f"the captured FUSION log is missing: {REAL_LOG} (../shared beside the "
                    f"checkout must hold data/fusion-real/sim.log)")
    return REAL_LOG.read_bytes()


def naive(lines: list[bytes]) -> Columns:
    """The columns after `lines`, read the plain way: split on words, no regular expression."""
    state: Columns = dict.fromkeys(PROGRESS_COLUMNS)
    for line in lines:
        _, found, message = line.decode().partition(" - INFO - ")
        if not found or not line[:4].isdigit():
            continue
        words = message.split()
        if message.startswith("Starting simulation for "):
            state["current_erlang"] = float(words[3])
            state["total_erlangs"] = int(words[-1].rstrip(")").split("/")[1])
        elif message.startswith("Iteration ") and "completed for Erlang:" in message:
            state["current_iteration"], state["total_iterations"] = int(words[1]), int(words[4])
            state["current_erlang"] = float(words[-1])
    return state


def complete_lines(stream: bytes) -> list[bytes]:
    return stream.split(b"\n")[:-1]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def line(message: str) -> bytes:
    return (PREFIX + message).encode()


# --- the captured log --------------------------------------------------------------------


def test_the_captured_log_is_the_one_described() -> None:
    lines = complete_lines(real_log())
    assert sum(b"Starting simulation for" in each for each in lines) == 3
    assert sum(b"BATCH SIMULATION SUMMARY" in each for each in lines) == 1
    assert naive(lines) == {"current_erlang": 500.0, "total_erlangs": 3,
                            "current_iteration": 4, "total_iterations": 4}


def test_line_by_line_each_complete_line_gives_the_expected_columns(tmp_path: Path) -> None:
    path = tmp_path / "sim.log"
    path.write_bytes(b"")
    reader = LogReader(path)
    seen: list[bytes] = []
    for each in complete_lines(real_log()):
        before = reader.progress.columns()
        append(path, each)  # not ended yet: held
        reader.poll()
        assert reader.progress.columns() == before
        assert reader.offset == sum(len(done) + 1 for done in seen)
        append(path, b"\n")
        seen.append(each)
        changes = reader.poll()
        after = naive(seen)
        assert reader.progress.columns() == after
        assert changes == {name: value for name, value in after.items() if before[name] != value}
    assert reader.progress == Progress(500.0, 3, 4, 4)
    assert reader.take_outputs() == [REAL_OUTPUT]
    assert reader.take_outputs() == []
    assert (reader.problems, reader.offset) == (0, len(real_log()))


@pytest.mark.parametrize("seed", range(12))
def test_random_chunks_give_the_columns_of_the_complete_lines(tmp_path: Path, seed: int) -> None:
    stream = real_log()
    chance = random.Random(seed)
    cuts = sorted(chance.sample(range(1, len(stream)), chance.randint(1, 60)))
    assert_chunked_reading(tmp_path / "sim.log", stream, cuts)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_chunking_of_the_captured_log_gives_the_same_columns(data: st.DataObject) -> None:
    stream = real_log()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=30))))
    with tempfile.TemporaryDirectory() as folder:
        assert_chunked_reading(Path(folder) / "sim.log", stream, cuts)


def assert_chunked_reading(path: Path, stream: bytes, cuts: list[int]) -> None:
    path.write_bytes(b"")
    reader = LogReader(path)
    outputs: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        append(path, stream[start:end])
        reader.poll()
        done = stream[: stream.rfind(b"\n", 0, end) + 1]
        assert reader.progress.columns() == naive(complete_lines(done))
        assert reader.offset == len(done)
        outputs += reader.take_outputs()
    assert reader.progress == Progress(500.0, 3, 4, 4)
    assert outputs == [REAL_OUTPUT]


def test_resuming_from_an_offset_ends_as_reading_the_whole(tmp_path: Path) -> None:
    stream = real_log()
    path = tmp_path / "sim.log"
    half = stream.index(b"\n", len(stream) // 2) + 1
    path.write_bytes(stream[:half])
    first = LogReader(path)
    first.poll()
    append(path, stream[half:])

    resumed = LogReader(path, offset=first.offset, progress=Progress(**first.progress.columns()))
    resumed.poll()

    assert resumed.progress == Progress(500.0, 3, 4, 4)
    assert resumed.offset == len(stream)


# --- what is not progress ------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    b"Iteration 3 out of 4 completed for Erlang: 300.0",  # no logging prefix
    b"    Iteration 3 out of 4 completed for Erlang: 300.0",  # a traceback's quote
    b"Erlang 300.0:",  # the summary's second line
    b"Traceback (most recent call last):",
    line("Iteration 3 out of 4 completed for Erlang: 300.0 (again)"),
    line("Iteration three out of 4 completed for Erlang: 300.0"),
    line("Starting simulation for 300.0 Erlang"),
    line("CHILD=s1 iteration=0, done_units=1"),
    line("Completed 300.0 Erlang in 3.22 seconds"),
    line("Mean of blocking: 0.0"),
    line("Received signal 15, saving statistics..."),
    b"2026-11-28 19:47:57 - fusion - INFO - Iteration 3 out of 4 completed for Erlang: 1.0",
    b"",
    b"\xff\xfe\xfd",
])
def test_other_lines_say_nothing(text: bytes) -> None:
    assert parse_log_line(text) is None


@pytest.mark.parametrize(("message", "expected"), [
    ("Starting simulation for 300.0 Erlang (load 1/3)",
     LogLine({"current_erlang": 300.0, "total_erlangs": 3})),
    ("Iteration 10 out of 200 completed for Erlang: 1200.5",
     LogLine({"current_erlang": 1200.5, "current_iteration": 10, "total_iterations": 200})),
    ("Iteration 1 out of 4 completed for Erlang: 1e+16  \r",
     LogLine({"current_erlang": 1e16, "current_iteration": 1, "total_iterations": 4})),
    ("Saving to: /data/output/NSFNet/1128/s1", LogLine(saving_to="/data/output/NSFNet/1128/s1")),
    ("Saving to: relative/dir ", LogLine(saving_to="relative/dir")),
])
def test_fusions_messages_say_their_columns(message: str, expected: LogLine) -> None:
    assert parse_log_line(line(message)) == expected
    warning = line(message).replace(b" INFO ", b" WARNING ")
    assert parse_log_line(warning) == expected  # any level


def test_out_of_range_values_are_skipped_each_by_itself() -> None:
    parsed = parse_log_line(line("Iteration 99999999999 out of 4 completed for Erlang: 300.0"))
    assert parsed is not None
    assert parsed.columns == {"current_erlang": 300.0, "total_iterations": 4}
    assert len(parsed.problems) == 1 and "current_iteration" in parsed.problems[0]
    assert parse_log_line(line("Saving to: /données/s1")) == LogLine(saving_to="/données/s1")
    undecodable = parse_log_line(PREFIX.encode() + b"Saving to: /x/\xff")
    assert undecodable is not None and undecodable.saving_to is None and undecodable.problems


# --- the reader's file handling -------------------------------------------------------------


def test_a_shrinking_log_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "sim.log"
    path.write_bytes(real_log())
    reader = LogReader(path)
    reader.poll()
    assert reader.take_outputs() == [REAL_OUTPUT]

    path.write_bytes(line("Starting simulation for 700.0 Erlang (load 1/2)") + b"\n"
                     + line(f"Saving to: {REAL_OUTPUT}") + b"\n"
                     + line("Saving to: /elsewhere/s2") + b"\n")
    assert reader.poll() == {"current_erlang": 700.0, "total_erlangs": 2,
                             "current_iteration": None, "total_iterations": None}
    # A folder seen before the truncation is not reported again.
    assert reader.take_outputs() == ["/elsewhere/s2"]


def test_a_replaced_log_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "sim.log"
    path.write_bytes(line("Starting simulation for 300.0 Erlang (load 1/3)") + b"\n")
    reader = LogReader(path)
    reader.poll()
    replacement = tmp_path / "new.log"
    replacement.write_bytes(line("Iteration 2 out of 9 completed for Erlang: 800.0") * 2 + b"\n")
    replacement.replace(path)  # same size or larger, another file
    reader.poll()
    assert reader.progress == Progress(None, None, None, None)
    replacement.write_bytes(line("Iteration 2 out of 9 completed for Erlang: 800.0") + b"\n")
    replacement.replace(path)
    reader.poll()
    assert reader.progress == Progress(800.0, None, 2, 9)


def test_a_huge_line_is_skipped_in_bounded_memory_and_the_next_applies(tmp_path: Path) -> None:
    path = tmp_path / "sim.log"
    reader = LogReader(path)
    append(path, line("Saving to: /" + "x" * 100))
    for _ in range(3):
        append(path, b"y" * MAX_LINE_BYTES)
        reader.poll()
        assert len(reader._pending) <= MAX_LINE_BYTES
    append(path, b"\n" + line("Iteration 1 out of 2 completed for Erlang: 300.0") + b"\n")
    assert reader.poll() == {"current_erlang": 300.0, "current_iteration": 1,
                             "total_iterations": 2}
    assert reader.take_outputs() == []
    assert reader.problems == 1 and "longer than" in reader.take_problems()[0]


def test_result_folders_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "sim.log"
    path.write_bytes(b"".join(line(f"Saving to: /out/s{n}") + b"\n"
                              for n in range(MAX_OUTPUTS + 5)))
    reader = LogReader(path)
    reader.poll()
    assert len(reader.take_outputs()) == MAX_OUTPUTS
    assert reader.problems == 5
