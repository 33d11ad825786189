"""The approval state machine: every status and the only transitions allowed between them.

pending ──► approved ──► executing ──► succeeded | failed | stale
   │            └──────► expired
   └──► rejected | cancelled | expired
"""

from __future__ import annotations

from enum import StrEnum


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STALE = "stale"


S = ApprovalStatus

ALLOWED: dict[ApprovalStatus, frozenset[ApprovalStatus]] = {
    S.PENDING: frozenset({S.APPROVED, S.REJECTED, S.CANCELLED, S.EXPIRED}),
    S.APPROVED: frozenset({S.EXECUTING, S.EXPIRED}),
    S.EXECUTING: frozenset({S.SUCCEEDED, S.FAILED, S.STALE}),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.STALE: frozenset(),
}

TERMINAL = frozenset(status for status, nexts in ALLOWED.items() if not nexts)


class IllegalTransition(Exception):
    """A transition not listed in ALLOWED was attempted: a programming error, never a user's."""


def check_transition(current: str, new: ApprovalStatus) -> ApprovalStatus:
    """Return `new` when `current -> new` is allowed; raise IllegalTransition otherwise."""
    if new not in ALLOWED[ApprovalStatus(current)]:
        raise IllegalTransition(f"approval cannot go from {current} to {new}")
    return new
