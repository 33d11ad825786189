"""Durations as people write them in policy files and on the command line: 30m, 12h, 7d."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """Parse `<number><s|m|h|d>`; raise ValueError for anything else or a zero duration."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h or 7d")
    delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if not delta:
        raise ValueError("a duration must be longer than zero")
    return delta
