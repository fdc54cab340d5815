"""The time as the `runs` table holds it: naive UTC.

The GUI's schema has DateTime columns without a time zone, so every
timestamp written or compared with them is UTC with the zone dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
