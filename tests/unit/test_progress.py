"""progress: parsing progress.jsonl lines and reading the file incrementally (SPEC §5)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_runner.core.progress import (
    MAX_LINE_BYTES,
    PROGRESS_COLUMNS,
    READ_PER_POLL,
    Progress,
    ProgressReader,
    apply_line,
)

FULL = Progress(current_erlang=300.0, total_erlangs=3, current_iteration=4, total_iterations=10)


def encode(record: object) -> bytes:
    return json.dumps(record).encode()


def lines(*records: object) -> bytes:
    return b"".join(encode(record) + b"\n" for record in records)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def applied(line: bytes, start: Progress | None = None) -> tuple[Progress, list[str]]:
    progress = dataclasses.replace(start) if start is not None else Progress()
    problems = apply_line(progress, line)
    return progress, problems


# --- apply_line: the event types and plain records ------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"type": "start", "config": {"total_erlangs": 3, "total_iterations": 10}},
            Progress(total_erlangs=3, total_iterations=10),
        ),
        (
            {"type": "start", "total_erlangs": 3, "total_iterations": 10},
            Progress(total_erlangs=3, total_iterations=10),
        ),
        (
            {"type": "erlang_start", "erlang": 300.0, "erlang_index": 0, "total_erlangs": 3},
            Progress(current_erlang=300.0, total_erlangs=3),
        ),
        (
            {
                "type": "iteration",
                "erlang": 300.0,
                "iteration": 4,
                "total_iterations": 10,
                "metrics": {"blocking_prob": 0.01},
            },
            Progress(current_erlang=300.0, current_iteration=4, total_iterations=10),
        ),
        (
            {
                "type": "erlang_complete",
                "erlang": 400.0,
                "metrics": {"mean_blocking": 0.02, "ci_lower": 0.01, "ci_upper": 0.03},
            },
            Progress(current_erlang=400.0),
        ),
        ({"type": "complete", "exit_code": 0, "summary": {}}, Progress(exit_code=0)),
        (
            {"type": "error", "message": "boom", "traceback": "Traceback ..."},
            Progress(last_error="boom"),
        ),
        (
            {"erlang": 300.0, "iteration": 1, "total_iterations": 2},
            Progress(current_erlang=300.0, current_iteration=1, total_iterations=2),
        ),
    ],
    ids=[
        "start-config",
        "start-top",
        "erlang_start",
        "iteration",
        "erlang_complete",
        "complete",
        "error",
        "plain",
    ],
)
def test_each_event_type_and_plain_records(record: object, expected: Progress) -> None:
    assert applied(encode(record)) == (expected, [])


def test_start_config_totals_win_over_top_level_ones() -> None:
    record = {"type": "start", "total_erlangs": 1, "config": {"total_erlangs": 5}}
    assert applied(encode(record)) == (Progress(total_erlangs=5), [])


def test_an_event_keeps_what_earlier_events_said() -> None:
    progress, problems = applied(encode({"type": "error", "message": "late"}), FULL)
    assert (progress, problems) == (dataclasses.replace(FULL, last_error="late"), [])


def test_an_integer_erlang_is_stored_as_a_float() -> None:
    progress, _ = applied(b'{"erlang": 300}')
    assert progress.current_erlang == 300.0
    assert type(progress.current_erlang) is float


def test_an_integral_float_count_is_stored_as_an_int() -> None:
    progress, problems = applied(b'{"iteration": 2.0, "total_iterations": 1e1}')
    assert (progress, problems) == (Progress(current_iteration=2, total_iterations=10), [])
    assert type(progress.current_iteration) is int
    assert type(progress.total_iterations) is int


# --- apply_line: wrong-typed values are skipped one by one ----------------------------------

BAD_NUMBERS = [
    '"300"',
    "true",
    "false",
    "null",
    "[1]",
    '{"a": 1}',
    "NaN",
    "Infinity",
    "1e400",
    "1" + "0" * 400,
]
BAD_COUNTS = [*BAD_NUMBERS, "1.5", "-1", str(1 << 31), "-0.5"]


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_a_wrong_erlang_is_skipped_and_the_rest_applies(bad: str) -> None:
    line = f'{{"erlang": {bad}, "iteration": 4, "total_iterations": 10}}'.encode()
    progress, problems = applied(line)
    assert progress == Progress(current_iteration=4, total_iterations=10)
    assert len(problems) == 1
    assert "erlang" in problems[0]


@pytest.mark.parametrize("key", ["iteration", "total_iterations", "total_erlangs"])
@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_a_wrong_count_is_skipped_and_the_rest_applies(key: str, bad: str) -> None:
    line = f'{{"type": "iteration", "erlang": 500, "{key}": {bad}}}'.encode()
    progress, problems = applied(line, FULL)
    assert progress == dataclasses.replace(FULL, current_erlang=500.0)
    assert len(problems) == 1
    assert key in problems[0]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (
            b'{"type": "start", "config": {"total_erlangs": "3", "total_iterations": 7}}',
            "total_erlangs",
        ),
        (b'{"type": "start", "config": [1, 2], "total_iterations": 7}', "config"),
        (b'{"type": "complete", "exit_code": true, "total_iterations": 7}', "exit_code"),
        (b'{"type": "complete", "exit_code": 1.0, "total_iterations": 7}', "exit_code"),
        (b'{"type": "error", "message": ["boom"], "total_iterations": 7}', "message"),
    ],
)
def test_wrong_typed_event_fields_are_skipped_one_by_one(line: bytes, key: str) -> None:
    progress, problems = applied(line)
    assert progress == Progress(total_iterations=7)
    assert len(problems) == 1
    assert key in problems[0]


def test_missing_fields_are_not_problems() -> None:
    assert applied(b'{"type": "error"}') == (Progress(), [])
    assert applied(b'{"type": "complete"}') == (Progress(), [])
    assert applied(b'{"type": "start"}') == (Progress(), [])


# --- apply_line: whole lines skipped --------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b'{"erlang": 300.0',
        b"not json",
        b'[{"erlang": 300.0}]',
        b'"erlang"',
        b"42",
        b"null",
        b'{"type": "bogus", "erlang": 1.0}',
        b'{"type": null, "erlang": 1.0}',
        b'{"type": ["iteration"], "erlang": 1.0}',
        b'{"type": "Iteration", "erlang": 1.0}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"erlang": 1.0}{"erlang": 2.0}',
        b'{"erlang": 1.0, "pad": "\xff\xfe"} \xff',
    ],
)
def test_a_bad_line_is_one_problem_and_changes_nothing(line: bytes) -> None:
    progress, problems = applied(line, FULL)
    assert progress == FULL
    assert len(problems) == 1


@pytest.mark.parametrize("line", [b"", b"   ", b"\t", b"\r"])
def test_blank_lines_are_ignored_silently(line: bytes) -> None:
    assert applied(line, FULL) == (FULL, [])


def test_invalid_utf8_inside_a_string_is_tolerated() -> None:
    progress, problems = applied(b'{"type": "error", "message": "bad \xff\xc3 byte", "erlang": 2}')
    assert problems == []
    assert progress.current_erlang == 2.0
    assert progress.last_error is not None
    assert progress.last_error.startswith("bad ")
    assert "\ufffd" in progress.last_error


def test_a_utf16_looking_line_is_not_decoded_as_utf16() -> None:
    progress, problems = applied('{"erlang": 1.0}'.encode("utf-16-le"))
    assert progress == Progress()
    assert len(problems) == 1


# --- the reader: basics -------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "progress.jsonl"


def test_a_missing_file_is_nothing_yet(path: Path) -> None:
    reader = ProgressReader(path)
    assert reader.poll() == {}
    append(path, lines({"erlang": 300.0}))
    assert reader.poll() == {"current_erlang": 300.0}


def test_a_missing_folder_is_nothing_yet(tmp_path: Path) -> None:
    reader = ProgressReader(tmp_path / "not-yet" / "progress.jsonl")
    assert reader.poll() == {}
    assert reader.progress == Progress()


def test_poll_returns_only_the_columns_that_changed(path: Path) -> None:
    reader = ProgressReader(path)
    append(path, lines({"type": "start", "config": {"total_erlangs": 3, "total_iterations": 2}}))
    assert reader.poll() == {"total_erlangs": 3, "total_iterations": 2}
    assert reader.poll() == {}
    append(path, lines({"erlang": 300.0, "iteration": 1, "total_iterations": 2}))
    assert reader.poll() == {"current_erlang": 300.0, "current_iteration": 1}
    append(path, lines({"erlang": 300.0, "iteration": 2}, {"type": "error", "message": "x"}))
    assert reader.poll() == {"current_iteration": 2}
    assert reader.progress.last_error == "x"
    append(path, lines({"erlang": 400, "iteration": 1}, {"erlang": 300.0, "iteration": 2}))
    assert reader.poll() == {}  # changed and changed back between two polls


def test_the_columns_are_the_four_progress_columns() -> None:
    assert tuple(FULL.columns()) == PROGRESS_COLUMNS
    assert FULL.columns() == {
        "current_erlang": 300.0,
        "total_erlangs": 3,
        "current_iteration": 4,
        "total_iterations": 10,
    }


def test_a_line_written_in_two_halves_waits_for_its_newline(path: Path) -> None:
    first = lines({"erlang": 100.0})
    second = encode({"erlang": 300.0, "iteration": 7})
    append(path, first + second[:10])
    reader = ProgressReader(path)
    assert reader.poll() == {"current_erlang": 100.0}
    assert reader.offset == len(first)
    append(path, second[10:])
    assert reader.poll() == {}
    assert reader.offset == len(first)
    append(path, b"\n")
    assert reader.poll() == {"current_erlang": 300.0, "current_iteration": 7}
    assert reader.offset == len(first) + len(second) + 1
    assert reader.problems == 0


def test_bad_lines_are_counted_described_and_cleared(path: Path) -> None:
    good = lines({"erlang": 300.0})
    append(path, good + b"{oops\n" + lines([1], {"type": "bogus"}, {"iteration": "x"}))
    reader = ProgressReader(path)
    assert reader.poll() == {"current_erlang": 300.0}
    assert reader.problems == 4
    notes = reader.take_problems()
    assert len(notes) == 4
    assert notes[0].startswith(f"byte {len(good)}:")
    assert "bogus" in notes[2]
    assert "iteration" in notes[3]
    assert (reader.problems, reader.take_problems()) == (0, [])


def test_problem_descriptions_are_bounded_but_the_count_is_exact(path: Path) -> None:
    append(path, b"{oops\n" * 5000)
    reader = ProgressReader(path)
    reader.poll()
    assert reader.problems == 5000
    notes = reader.take_problems()
    assert 0 < len(notes) <= 1000
    assert all(len(note) < 200 for note in notes)


def test_invalid_utf8_lines_do_not_stop_the_reader(path: Path) -> None:
    append(path, b"\xff\xfe\xfd\n" + b'{"erlang": 1.0, "x": "\xc3"}\n' + lines({"iteration": 3}))
    reader = ProgressReader(path)
    assert reader.poll() == {"current_erlang": 1.0, "current_iteration": 3}
    assert reader.problems == 1


# --- the reader: restarts, truncation and replacement --------------------------------------


def test_a_new_reader_resumes_at_the_offset_without_reapplying(path: Path) -> None:
    append(path, lines({"erlang": 100.0, "iteration": 1}, {"type": "error", "message": "m"}))
    old = ProgressReader(path)
    old.poll()
    resumed = ProgressReader(path, offset=old.offset)
    assert resumed.offset == old.offset
    assert resumed.poll() == {}
    assert resumed.progress == Progress()
    append(path, lines({"iteration": 2}))
    assert resumed.poll() == {"current_iteration": 2}
    assert resumed.progress == Progress(current_iteration=2)
    assert resumed.offset == path.stat().st_size


def test_a_resumed_reader_reports_only_new_changes(path: Path) -> None:
    append(path, lines({"erlang": 100.0, "iteration": 1, "total_iterations": 5}))
    old = ProgressReader(path)
    old.poll()
    resumed = ProgressReader(path, offset=old.offset, progress=dataclasses.replace(old.progress))
    assert resumed.poll() == {}
    append(path, lines({"iteration": 2}))
    assert resumed.poll() == {"current_iteration": 2}
    assert resumed.progress == Progress(
        current_erlang=100.0, current_iteration=2, total_iterations=5
    )


def test_a_truncated_file_is_read_again_from_the_start(path: Path) -> None:
    append(
        path,
        lines(
            {"type": "start", "total_erlangs": 3, "total_iterations": 9},
            {"erlang": 300.0, "iteration": 5},
            {"type": "error", "message": "m"},
        ),
    )
    reader = ProgressReader(path)
    reader.poll()
    path.write_bytes(lines({"erlang": 100.0}))  # truncate, then a shorter start
    assert reader.poll() == {
        "current_erlang": 100.0,
        "total_erlangs": None,
        "current_iteration": None,
        "total_iterations": None,
    }
    assert reader.progress == Progress(current_erlang=100.0)
    assert reader.offset == len(lines({"erlang": 100.0}))


def test_a_file_truncated_inside_a_held_line_is_read_again(path: Path) -> None:
    append(path, lines({"iteration": 1}) + b'{"iteration": 2, "erlang": 1')
    reader = ProgressReader(path)
    reader.poll()
    path.write_bytes(lines({"iteration": 1}, {"iteration": 3}))  # past the offset, not the held
    reader.poll()
    assert reader.progress == Progress(current_iteration=3)


def test_a_replaced_file_is_read_from_the_start(path: Path, tmp_path: Path) -> None:
    append(path, lines({"erlang": 300.0, "iteration": 1}))
    reader = ProgressReader(path)
    reader.poll()
    new = tmp_path / "new.jsonl"
    new.write_bytes(lines({"erlang": 100.0, "iteration": 8, "total_iterations": 9}, {"x": 0}))
    assert new.stat().st_size > path.stat().st_size  # only the inode tells it apart
    os.replace(new, path)
    assert reader.poll() == {"current_erlang": 100.0, "current_iteration": 8, "total_iterations": 9}
    assert reader.problems == 0
    assert reader.offset == path.stat().st_size


def test_a_deleted_then_recreated_file_is_read_from_the_start(path: Path) -> None:
    append(path, lines({"iteration": 1}))
    reader = ProgressReader(path)
    reader.poll()
    path.unlink()
    assert reader.poll() == {}
    keep = path.with_suffix(".keep")
    keep.write_bytes(b"")  # hold the old inode number so the new file gets another
    append(path, lines({"erlang": 2.0, "iteration": 9}))
    assert reader.poll() == {"current_erlang": 2.0, "current_iteration": 9}


# --- the reader: long lines ----------------------------------------------------------------


def test_a_long_line_arriving_over_many_polls_is_skipped_unheld(path: Path) -> None:
    before = lines({"erlang": 100.0})
    append(path, before)
    reader = ProgressReader(path)
    reader.poll()
    piece = b"x" * (256 * 1024)
    for _ in range(20):  # 5 MiB, no newline yet
        append(path, piece)
        assert reader.poll() == {}
        assert len(reader._pending) <= MAX_LINE_BYTES
        assert reader.offset == len(before)
    append(path, b"\n" + lines({"erlang": 300.0}))
    assert reader.poll() == {"current_erlang": 300.0}
    assert reader.offset == path.stat().st_size
    assert reader.problems == 1
    assert len(reader._pending) == 0
    append(path, lines({"iteration": 4}))  # reading goes on normally after it
    assert reader.poll() == {"current_iteration": 4}


def test_a_long_line_read_in_one_poll_is_skipped_unheld(path: Path) -> None:
    append(path, b'{"erlang": 1.0, "pad": "' + b"x" * (5 << 20))
    reader = ProgressReader(path)
    assert reader.poll() == {}
    assert len(reader._pending) <= MAX_LINE_BYTES
    assert reader.offset == 0
    append(path, b'"}\n' + lines({"iteration": 2}))
    assert reader.poll() == {"current_iteration": 2}
    assert reader.progress == Progress(current_iteration=2)
    assert reader.problems == 1
    append(path, lines({"iteration": 4}))  # reading goes on normally after it
    assert reader.poll() == {"current_iteration": 4}
    assert reader.offset == path.stat().st_size


def test_an_endless_line_is_read_a_share_per_poll_and_the_line_after_it_applies(
    path: Path,
) -> None:
    # A simulation that wrote 40 MiB without a newline must not hold the daemon's
    # loop for the whole read: each poll reads its share and says more is left.
    append(path, b"x" * (40 << 20) + b"\n" + lines({"iteration": 7}))
    reader = ProgressReader(path)
    polls = [reader.poll()]
    while reader.behind:
        assert polls[-1] == {}
        polls.append(reader.poll())
    assert len(polls) == -(-path.stat().st_size // READ_PER_POLL)
    assert polls[-1] == {"current_iteration": 7}
    assert reader.problems == 1
    assert reader.offset == path.stat().st_size


def test_a_poll_without_a_limit_reads_to_the_end(path: Path) -> None:
    append(path, b"x" * (20 << 20) + b"\n" + lines({"iteration": 3}))
    reader = ProgressReader(path)
    assert reader.poll(limit=None) == {"current_iteration": 3}
    assert not reader.behind


def padded(size: int) -> bytes:
    """A valid line of exactly `size` bytes, setting erlang to 1.0."""
    head = b'{"erlang": 1.0, "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


@pytest.mark.parametrize(("size", "applies"), [(MAX_LINE_BYTES, True), (MAX_LINE_BYTES + 1, False)])
@pytest.mark.parametrize("split", [False, True])
def test_the_line_length_limit_is_exact(path: Path, size: int, applies: bool, split: bool) -> None:
    line = padded(size)
    reader = ProgressReader(path)
    if split:
        append(path, line)
        reader.poll()
        append(path, b"\n")
    else:
        append(path, line + b"\n")
    reader.poll()
    assert reader.progress == (Progress(current_erlang=1.0) if applies else Progress())
    assert reader.problems == (0 if applies else 1)
    assert reader.offset == size + 1


# --- the reader: bursts ----------------------------------------------------------------------


def test_a_burst_of_ten_thousand_lines_ends_at_the_last_values(path: Path) -> None:
    records: list[dict[str, object]] = [
        {
            "type": "iteration",
            "erlang": 100.0 + n // 100,
            "iteration": n % 100,
            "total_iterations": 100,
            "metrics": {"blocking_prob": n / 1e5},
        }
        for n in range(10_000)
    ]
    records[5000] = {"type": "error", "message": "halfway"}
    records[-1] = {"erlang": 7.5, "iteration": 3, "total_iterations": 4, "total_erlangs": 2}
    append(path, lines(*records))
    reader = ProgressReader(path)
    changes = reader.poll()
    expected = Progress(
        current_erlang=7.5,
        total_erlangs=2,
        current_iteration=3,
        total_iterations=4,
        last_error="halfway",
    )
    assert reader.progress == expected
    assert changes == expected.columns()
    assert reader.offset == path.stat().st_size
    assert reader.problems == 0


# --- property: how the bytes arrive does not matter ----------------------------------------

VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2.0, 1e400, 1 << 31, 10**400]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
TYPES = st.sampled_from(
    ["start", "erlang_start", "iteration", "erlang_complete", "complete", "error", "bogus"]
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "type": TYPES,
        "erlang": VALUES,
        "iteration": VALUES,
        "total_iterations": VALUES,
        "total_erlangs": VALUES,
        "config": st.fixed_dictionaries(
            {}, optional={"total_erlangs": VALUES, "total_iterations": VALUES}
        ),
        "exit_code": VALUES,
        "message": st.one_of(st.text(max_size=5), VALUES),
    },
)
LINES = st.one_of(
    RECORDS.map(encode),
    st.sampled_from([b"", b" ", b"{bad", b"[1]", b"\xff\xfe", b'{"message": "\xe2\x82"}']),
)


def replay(stream: bytes) -> Progress:
    """The state after the complete lines of `stream`, applied one by one."""
    progress = Progress()
    for line in stream.split(b"\n")[:-1]:
        apply_line(progress, line)
    return progress


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, max_size=12), st.booleans(), st.data())
def test_any_chunking_gives_the_same_states_as_reading_whole(
    records: list[bytes], end_with_newline: bool, data: st.DataObject
) -> None:
    stream = b"\n".join(records) + (b"\n" if end_with_newline else b"")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    with tempfile.TemporaryDirectory() as folder:
        whole_path, chunked_path = Path(folder) / "whole", Path(folder) / "chunked"
        whole_path.write_bytes(stream)
        whole = ProgressReader(whole_path)
        whole.poll()
        chunked = ProgressReader(chunked_path)
        chunked_path.write_bytes(b"")
        notes: list[str] = []
        before = Progress()
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            append(chunked_path, stream[start:end])
            changes = chunked.poll()
            after = replay(stream[:end])
            assert chunked.progress == after
            assert changes == {
                name: value
                for name, value in after.columns().items()
                if before.columns()[name] != value
            }
            assert chunked.offset == stream[:end].rfind(b"\n") + 1
            notes += chunked.take_problems()
            before = after
    assert chunked.progress == whole.progress
    assert chunked.offset == whole.offset
    assert notes == whole.take_problems()
