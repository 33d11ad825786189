"""Query parameters shared by the API's reports: date filters, range-checked.

A date near year 1 or 9999 passes Python's parser but not what follows (conversion to UTC,
"30 days before", the database's own range): it answered 500. Dates outside the years opsgate
can hold records for are refused as invalid parameters instead (422 `invalid_payload`,
audited like every refused parameter).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from pydantic import AfterValidator

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def _in_range(value: datetime | None) -> datetime | None:
    # By the year as written: an offset moves it by at most a day, which stays in range.
    if value is not None and not EARLIEST.year <= value.year < LATEST.year:
        raise ValueError(f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return value


FilterDate = Annotated[
    datetime | None,
    AfterValidator(_in_range),
    Query(description=f"ISO 8601; between {EARLIEST:%Y} and {LATEST:%Y}"),
]
