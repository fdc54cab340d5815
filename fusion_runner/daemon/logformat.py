"""Daemon log lines that client text (run ids, config values, messages) cannot split or forge."""

from __future__ import annotations

import logging
import os
import re

# C0 (newline, carriage return, tab, escape ...), DEL, C1 (U+0085 is a newline to some
# readers) and the Unicode line and paragraph separators.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """text with every control character and line separator as a visible escape, as repr does."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    character = found.group()
    if character in _SHORT:
        return _SHORT[character]
    code = ord(character)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class EscapingFormatter(logging.Formatter):
    """One record, one line: the formatted message is escaped.

    A traceback that exc_info or stack_info appends is left as it is: it is
    several lines by nature, and the readers of a log expect it so.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


# sd-daemon(3) prefixes: journald reads them as the line's syslog priority.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
               logging.CRITICAL: 2}
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
JOURNAL_FORMAT = "<%(priority)d>%(message)s"


class JournalFormatter(EscapingFormatter):
    """For stderr connected to journald: its priority, and no timestamp (journald has one)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.priority = _PRIORITIES.get(record.levelno, 6)
        return super().formatMessage(record)


def install(fmt: str | None = None, logger: logging.Logger | None = None,
            environ: dict[str, str] | None = None) -> None:
    """Format every handler of logger (the root logger by default), escaped.

    Without `fmt`: journald's priority prefixes where systemd connected stderr
    to the journal (JOURNAL_STREAM is set), else a timestamp and the level.
    """
    journal = "JOURNAL_STREAM" in (os.environ if environ is None else environ)
    formatter: logging.Formatter
    if fmt is None and journal:
        formatter = JournalFormatter(JOURNAL_FORMAT)
    else:
        formatter = EscapingFormatter(fmt or PLAIN_FORMAT)
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(formatter)
