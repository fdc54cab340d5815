"""logformat: client text in a daemon log message can neither split a line nor forge one."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusion_runner.daemon import logformat

UNSAFE = [chr(code) for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]]


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\t", "\\t"),
        ("\x00\x0b\x0c\x1b[31m\x1c\x1f", "\\x00\\x0b\\x0c\\x1b[31m\\x1c\\x1f"),
        ("\x7f\x80\x85\x9f", "\\x7f\\x80\\x85\\x9f"),
        ("\u2028\u2029", "\\u2028\\u2029"),
    ],
)
def test_control_characters_and_line_separators_become_visible_escapes(
    text: str, escaped: str
) -> None:
    assert logformat.escape(text) == escaped


def test_ordinary_text_is_kept_as_it_is() -> None:
    text = "run=abc action=started ünïcødé 😀 \xa0\u3000 \\n already-escaped 'q' \"qq\""
    assert logformat.escape(text) == text


@pytest.mark.parametrize("character", UNSAFE)
def test_each_escape_is_what_repr_shows(character: str) -> None:
    assert logformat.escape(character) == repr(character)[1:-1]


@given(st.text())
def test_an_escaped_text_is_one_line_of_visible_characters(text: str) -> None:
    escaped = logformat.escape(text)
    assert len(escaped.splitlines()) <= 1
    assert not set(escaped) & set(UNSAFE)
    if not set(text) & set(UNSAFE):
        assert escaped == text


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "fusion_runner", logging.ERROR, __file__, 1, message, args,
        sys.exc_info() if exc_info else None,
    )


def test_the_formatted_message_is_one_line() -> None:
    formatter = logformat.EscapingFormatter("%(levelname)s %(message)s")
    line = formatter.format(record("run=%s action=failed", "abc\nFORGED action=started pid=1"))
    assert line == "ERROR run=abc\\nFORGED action=started pid=1 action=failed"


def test_the_record_itself_is_not_changed_for_other_handlers() -> None:
    formatted = record("run=%s", "a\nb")
    logformat.EscapingFormatter("%(message)s").format(formatted)
    assert formatted.getMessage() == "run=a\nb"


def test_a_traceback_is_appended_as_it_is() -> None:
    formatter = logformat.EscapingFormatter("%(message)s")
    try:
        raise ValueError("why")
    except ValueError:
        text = formatter.format(record("run=%s", "a\nb", exc_info=True))
    first, *traceback = text.split("\n")
    assert first == "run=a\\nb"
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: why"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("tests.unit.test_logformat")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers.clear()


def test_install_formats_every_handler_with_escapes(logger: logging.Logger) -> None:
    streams = [io.StringIO(), io.StringIO()]
    for stream in streams:
        logger.addHandler(logging.StreamHandler(stream))
    logformat.install("%(levelname)s %(message)s", logger)
    logger.info("run=%s action=started", "x\u2028FORGED\r\n")
    for stream in streams:
        assert stream.getvalue() == "INFO run=x\\u2028FORGED\\r\\n action=started\n"


def test_install_defaults_to_the_root_logger() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    # pytest's own capture handlers are on the root logger too: give them theirs back.
    before = {other: other.formatter for other in root.handlers}
    try:
        logformat.install("%(message)s")
        assert isinstance(handler.formatter, logformat.EscapingFormatter)
    finally:
        root.removeHandler(handler)
        for other, formatter in before.items():
            other.setFormatter(formatter)


def test_under_journald_each_line_carries_its_priority_and_no_timestamp(
    logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.DEBUG)
    logformat.install(logger=logger, environ={"JOURNAL_STREAM": "8:1234"})
    logger.debug("action=a")
    logger.info("action=b")
    logger.warning("action=c run=%s", "x\ny")
    logger.error("action=d")
    assert stream.getvalue().splitlines() == [
        "<7>action=a", "<6>action=b", "<4>action=c run=x\\ny", "<3>action=d"]


def test_elsewhere_each_line_has_a_timestamp_and_its_level(logger: logging.Logger) -> None:
    stream = io.StringIO()
    logger.addHandler(logging.StreamHandler(stream))
    logformat.install(logger=logger, environ={})
    logger.warning("action=c")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING action=c\n",
                        stream.getvalue())
