"""Search probing: each person's record searches counted within a rolling window, across
every process.

A search answers with masked personal data, and what it finds or misses still tells the
searcher something: many searches, or many that find nothing, are how an insider walks a
phone number or an address out of the records one guess at a time. So past a number of
searches in the window a search is refused (`enforce`) or only flagged (`monitor`), and past
a number of misses the search's audit record is flagged `search_probing` for review.

The count lives in the database (usage events `records.search` and `records.search.miss`),
written in the same transaction as the search's audit record. Concurrent searches of one
person are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite: its single
writer), so parallel requests spread over several processes cannot squeeze past the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from opsgate.core.actions.policy import ControlMode
from opsgate.core.ids import new_id
from opsgate.db.models import UsageEvent

SEARCH = "records.search"
MISS = "records.search.miss"
FLAG = "search_probing"


@dataclass(frozen=True)
class ProbingRule:
    """At most `max_searches` per person within `window`; flag from `flag_misses` misses."""

    mode: ControlMode
    max_searches: int
    window: timedelta
    flag_misses: int

    def describe(self) -> dict[str, Any]:
        return {
            "window_minutes": int(self.window.total_seconds() // 60),
            "flag_misses": self.flag_misses,
            "limit": self.max_searches,
        }


@dataclass(frozen=True)
class SearchUsage:
    """A person's searches within the window, and how many of them found nothing."""

    searches: int
    misses: int


def usage(session: Session, rule: ProbingRule, actor_id: str, now: datetime) -> SearchUsage:
    """Take the person's search lock (held until the transaction ends) and count their
    searches within the window. Events older than the window are deleted on the way: the
    count needs nothing older, and the table stays small."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"opsgate-search:{actor_id}"},
        )
    ours = (UsageEvent.actor_id == actor_id, UsageEvent.action.in_((SEARCH, MISS)))
    since = now - rule.window
    session.execute(delete(UsageEvent).where(*ours, UsageEvent.occurred_at <= since))
    rows = session.execute(
        select(UsageEvent.action, func.count())
        .where(*ours, UsageEvent.occurred_at > since)
        .group_by(UsageEvent.action)
    ).all()
    counts = {str(action): int(count) for action, count in rows}
    return SearchUsage(counts.get(SEARCH, 0) + counts.get(MISS, 0), counts.get(MISS, 0))


def refuses(rule: ProbingRule, used: SearchUsage) -> bool:
    """True when one more search would break an enforced limit."""
    return rule.mode == ControlMode.ENFORCE and used.searches >= rule.max_searches


def record(
    session: Session,
    actor_id: str,
    request_id: str,
    used: SearchUsage,
    *,
    missed: bool,
    now: datetime,
) -> SearchUsage:
    """Count one accepted search (in the caller's transaction); return the usage with it."""
    session.add(
        UsageEvent(
            id=new_id("use"),
            actor_id=actor_id,
            action=MISS if missed else SEARCH,
            amount_minor=None,
            request_id=request_id,
            occurred_at=now,
        )
    )
    return SearchUsage(used.searches + 1, used.misses + int(missed))


def flags(rule: ProbingRule, used: SearchUsage, *, over_limit: bool) -> dict[str, Any] | None:
    """The audit record's `search_probing` flag (counts and the rule), or None when the
    search is neither over the limit nor past the misses threshold."""
    if not over_limit and used.misses < rule.flag_misses:
        return None
    flag = {"searches": used.searches, "misses": used.misses} | rule.describe()
    return {FLAG: flag | ({"over_limit": True} if over_limit else {})}
