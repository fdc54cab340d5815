"""outcome: the exit record, signal names, the outcome of a run and the bounded message."""

from __future__ import annotations

import json
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusion_runner.core import outcome
from fusion_runner.core.outcome import MAX_MESSAGE_BYTES, ExitRecord, Outcome, decide, tail_text
from fusion_runner.core.status import RunStatus

EXITED_3 = ExitRecord(exit_code=3, signal=None, spawn_error=None)
NO_FILE = "[Errno 2] No such file or directory: 'nope'"


def exited(code: int) -> ExitRecord:
    return ExitRecord(exit_code=code, signal=None, spawn_error=None)


def killed(signum: int) -> ExitRecord:
    return ExitRecord(exit_code=None, signal=signum, spawn_error=None)


def size(text: str) -> int:
    return len(text.encode("utf-8"))  # strict: fails on a lone surrogate


# --- the exit record ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"exit_code": 0, "signal": null, "spawn_error": null, "cpu_seconds": 1.25,'
            ' "max_rss_kib": 20480}',
            ExitRecord(0, None, None, 1.25, 20480),
        ),
        (
            '{"exit_code": null, "signal": 9, "spawn_error": null, "cpu_seconds": 0,'
            ' "max_rss_kib": 0}',
            ExitRecord(None, 9, None, 0.0, 0),
        ),
        (
            json.dumps({"exit_code": None, "signal": None, "spawn_error": NO_FILE}),
            ExitRecord(None, None, NO_FILE),
        ),
        ('{"exit_code": 255}', ExitRecord(255, None, None)),
        ('{"signal": 64, "future_field": [1]}', ExitRecord(None, 64, None)),
        ('{"spawn_error": ""}', ExitRecord(None, None, "")),
    ],
)
def test_an_exit_record_is_read(text: str, expected: ExitRecord) -> None:
    record = ExitRecord.from_json(text)
    assert record == expected
    assert record is not None and isinstance(record.cpu_seconds, float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        "[]",
        "null",
        "0",
        '"exit_code"',
        "[" * 100_000,
        "{}",
        '{"exit_code": null, "signal": null, "spawn_error": null}',
        '{"exit_code": 1, "signal": 9}',
        '{"exit_code": 1, "spawn_error": "x"}',
        '{"signal": 9, "spawn_error": "x"}',
        '{"exit_code": true}',
        '{"exit_code": "0"}',
        '{"exit_code": 1.0}',
        '{"exit_code": -1}',
        '{"exit_code": 256}',
        '{"exit_code": 1e400}',
        '{"signal": 0}',
        '{"signal": -9}',
        '{"signal": false}',
        '{"signal": "SIGKILL"}',
        '{"spawn_error": 2}',
        '{"spawn_error": ["x"]}',
        '{"exit_code": 0, "cpu_seconds": "1"}',
        '{"exit_code": 0, "cpu_seconds": -0.5}',
        '{"exit_code": 0, "cpu_seconds": NaN}',
        '{"exit_code": 0, "cpu_seconds": Infinity}',
        '{"exit_code": 0, "cpu_seconds": true}',
        '{"exit_code": 0, "cpu_seconds": null}',
        '{"exit_code": 0, "max_rss_kib": 1.5}',
        '{"exit_code": 0, "max_rss_kib": -1}',
        '{"exit_code": 0, "max_rss_kib": true}',
        '{"exit_code": 0, "max_rss_kib": null}',
        '{"exit_code": 0}{"exit_code": 1}',
        '{"exit_code": ' + "9" * 5000 + "}",
    ],
)
def test_a_malformed_exit_record_is_none(text: str) -> None:
    assert ExitRecord.from_json(text) is None


HOW = st.one_of(
    st.integers(0, 255).map(lambda code: (code, None, None)),
    st.integers(1, 255).map(lambda signum: (None, signum, None)),
    st.text().map(lambda error: (None, None, error)),
)


@given(HOW, st.floats(0, 1e9), st.integers(0, 2**63))
def test_an_exit_record_survives_json(
    how: tuple[int | None, int | None, str | None], cpu: float, rss: int
) -> None:
    record = ExitRecord(*how, cpu_seconds=cpu, max_rss_kib=rss)
    assert ExitRecord.from_json(record.to_json()) == record


@given(st.text(max_size=200))
def test_from_json_never_raises(text: str) -> None:
    record = ExitRecord.from_json(text)
    assert record is None or isinstance(record, ExitRecord)


# --- signal names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (9, "SIGKILL"),
        (15, "SIGTERM"),
        (11, "SIGSEGV"),
        (6, "SIGABRT"),
        (2, "SIGINT"),
        (77, "signal 77"),
        (0, "signal 0"),
        (-3, "signal -3"),
    ],
)
def test_signal_names(number: int, name: str) -> None:
    assert outcome.signal_name(number) == name


# --- decide ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "wait_status", "last_error", "log_tail", "expected"),
    [
        (exited(0), None, None, "", Outcome(RunStatus.COMPLETED, None)),
        (exited(0), 9, "boom", "Traceback", Outcome(RunStatus.COMPLETED, None)),
        (exited(3), None, None, "", Outcome(RunStatus.FAILED, "exit code 3")),
        (
            exited(3),
            None,
            "bad topology",
            "log line",
            Outcome(RunStatus.FAILED, "exit code 3\nbad topology"),
        ),
        (
            exited(1),
            None,
            None,
            "line 1\nValueError: x",
            Outcome(RunStatus.FAILED, "exit code 1\nline 1\nValueError: x"),
        ),
        (exited(1), None, "", "the log", Outcome(RunStatus.FAILED, "exit code 1\nthe log")),
        (exited(1), None, " \n", "the log", Outcome(RunStatus.FAILED, "exit code 1\nthe log")),
        (exited(1), None, "boom\n", "  \n", Outcome(RunStatus.FAILED, "exit code 1\nboom")),
        (exited(255), 0, None, "", Outcome(RunStatus.FAILED, "exit code 255")),
        (killed(11), None, None, "", Outcome(RunStatus.FAILED, "killed by signal SIGSEGV")),
        (
            killed(9),
            None,
            "oom?",
            "log",
            Outcome(RunStatus.FAILED, "killed by signal SIGKILL\noom?"),
        ),
        (
            killed(77),
            None,
            None,
            "log",
            Outcome(RunStatus.FAILED, "killed by signal signal 77\nlog"),
        ),
        (
            ExitRecord(None, None, NO_FILE),
            None,
            "ignored",
            "ignored",
            Outcome(RunStatus.FAILED, f"cannot start the simulation: {NO_FILE}"),
        ),
        # No record: the shim's own wait status is the fallback, never a completion.
        (
            None,
            signal.SIGKILL,
            None,
            "",
            Outcome(RunStatus.FAILED, "runner shim killed by signal SIGKILL"),
        ),
        (
            None,
            0x80 | signal.SIGSEGV,
            None,
            "tail",  # core dumped
            Outcome(RunStatus.FAILED, "runner shim killed by signal SIGSEGV\ntail"),
        ),
        (
            None,
            3 << 8,
            "boom",
            "",
            Outcome(
                RunStatus.FAILED, "runner shim exited with code 3 and left no exit record\nboom"
            ),
        ),
        (
            None,
            0,
            None,
            "",
            Outcome(RunStatus.FAILED, "runner shim exited with code 0 and left no exit record"),
        ),
        (None, None, None, "", Outcome(RunStatus.FAILED, "exit status could not be recovered")),
        (
            None,
            None,
            "boom",
            "",
            Outcome(RunStatus.FAILED, "exit status could not be recovered\nboom"),
        ),
        (None, 0x137F, None, "", Outcome(RunStatus.FAILED, "exit status could not be recovered")),
        (None, -1, None, "", Outcome(RunStatus.FAILED, "exit status could not be recovered")),
        (None, 2**40, None, "", Outcome(RunStatus.FAILED, "exit status could not be recovered")),
    ],
)
def test_decide(
    record: ExitRecord | None,
    wait_status: int | None,
    last_error: str | None,
    log_tail: str,
    expected: Outcome,
) -> None:
    assert decide(record, wait_status, last_error, log_tail) == expected


def test_a_long_log_tail_keeps_its_end() -> None:
    log = "".join(f"line {n}\n" for n in range(2000)) + "RuntimeError: the real cause"
    message = decide(EXITED_3, None, None, log).error_message
    assert message is not None
    assert size(message) == MAX_MESSAGE_BYTES
    assert message.startswith("exit code 3\n...")
    assert message.endswith("line 1999\nRuntimeError: the real cause")


def test_trimming_never_splits_a_character() -> None:
    for pad in range(4):
        message = decide(EXITED_3, None, "é" * 3000 + "x" * pad, "").error_message
        assert message is not None
        assert size(message) in range(MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES + 1)
        assert message.endswith("é" * 10 + "x" * pad)
        assert "\ufffd" not in message


def test_a_message_that_fits_exactly_is_not_trimmed() -> None:
    detail = "y" * (MAX_MESSAGE_BYTES - len("exit code 3\n"))
    assert decide(EXITED_3, None, detail, "").error_message == f"exit code 3\n{detail}"
    trimmed = decide(EXITED_3, None, detail + "z", "").error_message
    assert trimmed is not None and size(trimmed) == MAX_MESSAGE_BYTES
    assert trimmed.startswith("exit code 3\n...") and trimmed.endswith("yz")


def test_a_huge_spawn_error_is_cut_at_its_end() -> None:
    message = decide(ExitRecord(None, None, "€" * 5000), None, None, "").error_message
    assert message is not None
    assert message.startswith("cannot start the simulation: €€")
    assert MAX_MESSAGE_BYTES - 3 < size(message) <= MAX_MESSAGE_BYTES


def test_nul_and_lone_surrogates_never_reach_the_database() -> None:
    message = decide(EXITED_3, None, "a\x00b\ud800c", "").error_message
    assert message == "exit code 3\na\ufffdb\ufffdc"
    spawn = decide(ExitRecord(None, None, "x\x00"), None, None, "").error_message
    assert spawn == "cannot start the simulation: x\ufffd"


def texts(characters: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Short texts, and long ones (a random piece repeated) that must be trimmed."""
    piece = st.text(characters, min_size=1, max_size=8)
    return st.text(characters, max_size=40) | st.builds(str.__mul__, piece, st.integers(0, 3000))


ANY_TEXT = texts(st.characters(exclude_categories=()))  # NUL and lone surrogates included
CLEAN_TEXT = texts(st.characters(codec="utf-8", exclude_characters="\x00"))


@given(st.integers(min_value=1), ANY_TEXT, ANY_TEXT, st.booleans())
def test_any_failure_message_is_bounded_and_keeps_its_head(
    code: int, last_error: str, log_tail: str, give_error: bool
) -> None:
    result = decide(exited(code), None, last_error if give_error else None, log_tail)
    assert result.status is RunStatus.FAILED
    assert result.error_message is not None
    assert size(result.error_message) <= MAX_MESSAGE_BYTES
    assert "\x00" not in result.error_message
    head = f"exit code {code}"
    assert result.error_message == head or result.error_message.startswith(head + "\n")


@given(st.sampled_from([exited(1), exited(255), killed(9), killed(200), None]), CLEAN_TEXT)
def test_the_detail_is_whole_or_its_marked_end(record: ExitRecord | None, detail: str) -> None:
    message = decide(record, None, detail, "").error_message
    assert message is not None
    head, _, kept = message.partition("\n")
    whole = detail.strip()
    if size(f"{head}\n{whole}") <= MAX_MESSAGE_BYTES:
        assert kept == whole
    else:
        assert kept.startswith(outcome.TRIMMED)
        assert whole.endswith(kept.removeprefix(outcome.TRIMMED))
        # trimmed only as far as needed: at most the 3 other bytes of a cut character are lost
        assert MAX_MESSAGE_BYTES - 4 < size(message) <= MAX_MESSAGE_BYTES


@given(texts(st.characters()))
def test_any_spawn_error_message_is_bounded(error: str) -> None:
    result = decide(ExitRecord(None, None, error), None, "x" * 5000, "y" * 5000)
    assert result.status is RunStatus.FAILED and result.error_message is not None
    assert size(result.error_message) <= MAX_MESSAGE_BYTES
    assert result.error_message.startswith("cannot start the simulation: ")
    # Neither the log's tail nor stderr: only the error itself (which may hold x's too).
    assert "x" * 10 not in result.error_message or "x" * 10 in error


# --- tail_text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "max_bytes", "expected"),
    [
        (b"", 3072, ""),
        (b"one\ntwo\n\n  \n", 3072, "one\ntwo"),
        (b"  indented\n", 3072, "  indented"),
        (b"first line\nsecond\nthird\n", 12, "third"),  # cut inside 'second': dropped
        (b"first line\nsecond\nthird\n", 13, "second\nthird"),  # cut at a line start: kept
        (b"first line\nsecond\nthird\n", 14, "second\nthird"),
        (b"abcdefgh", 3, "fgh"),  # one cut line and no other: its end is all there is
        (b"x\xc3\xa9\xc3\xa9", 3, "\xe9"),  # no half character at the start
        ("x€€".encode(), 4, "€"),
        (b"bad \xff byte\n", 3072, "bad \ufffd byte"),
        (b"a\nb\n", 0, ""),
        (b"a\nb", -5, ""),
        (b"a\r\nb\r\n", 3072, "a\r\nb"),
    ],
)
def test_tail_text(data: bytes, max_bytes: int, expected: str) -> None:
    assert tail_text(data, max_bytes) == expected


def test_tail_text_reads_3_kib_by_default() -> None:
    log = b"".join(b"%04d %s\n" % (n, b"x" * 95) for n in range(100))
    tail = tail_text(log)
    assert size(tail) <= 3072
    assert tail.endswith("0099 " + "x" * 95)
    assert tail.startswith("0070 ")  # 30 whole lines of 101 bytes fit, the 31st was cut


@given(st.text(st.characters(max_codepoint=0x7E), max_size=400), st.integers(0, 500))
def test_the_tail_is_the_end_of_the_log(text: str, max_bytes: int) -> None:
    tail = tail_text(text.encode(), max_bytes)
    assert len(tail) <= max_bytes
    assert text.rstrip().endswith(tail)
    assert tail == tail.rstrip()


@given(st.binary(max_size=400), st.integers(0, 500))
def test_tail_text_never_raises(data: bytes, max_bytes: int) -> None:
    tail = tail_text(data, max_bytes)
    assert tail == tail.rstrip()
    assert "\ufffd" not in tail or not data.isascii()


def test_a_record_that_could_not_be_saved_keeps_the_outcome_and_says_why() -> None:
    why = "exit record not saved: [Errno 28] No space left on device"
    text = json.dumps({"exit_code": 3, "signal": None, "spawn_error": None,
                       "record_error": why, "shim_pid": 77})
    record = ExitRecord.from_json(text)
    assert record is not None and (record.record_error, record.shim_pid) == (why, 77)
    assert decide(record, None, None, "tail") == Outcome(
        RunStatus.FAILED, f"exit code 3 ({why})\ntail"
    )
    completed = ExitRecord(exit_code=0, signal=None, spawn_error=None, record_error=why)
    assert decide(completed, None, None, "") == Outcome(RunStatus.COMPLETED, None)


@pytest.mark.parametrize("shim_pid", [0, -1, True, "12", 1.5])
def test_a_bad_shim_pid_is_ignored(shim_pid: object) -> None:
    text = json.dumps({"exit_code": 0, "signal": None, "spawn_error": None, "shim_pid": shim_pid})
    record = ExitRecord.from_json(text)
    assert record is not None and record.shim_pid is None
