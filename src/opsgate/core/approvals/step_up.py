"""Step-up: a fresh proof of identity before a money-moving approval, by any route.

The rule (one, for the console and the API): approving a money-moving request needs a proof
of identity no older than the re-authentication window (`OPSGATE_CONSOLE_REAUTH_MINUTES`).
- A console session carries the time of its last proof (sign-in, or the password asked
  again on the approval page); the session row says it, not the browser.
- A bearer token lives for weeks and proves nothing fresh. Its holder asks for a step-up
  grant with their password (`POST /api/v1/auth/step-up`) and sends it as `X-Step-Up` with
  the approval. A grant is bound to its user and to the token that asked for it, valid
  `ttl` (5 minutes by default, `OPSGATE_STEP_UP_SECONDS`), good for one money-moving
  approval, and stored as its SHA-256 only.

`Approvals.decide` applies `check` to every money-moving approval; a refusal is audited
with code `step_up_required` and one of the `Missing` reasons.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.identity.actors import Actor
from opsgate.core.ids import new_id
from opsgate.db.models import ConsoleSession, StepUpGrant

STEP_UP_PREFIX = "ogs_"
STEP_UP_HEADER = "X-Step-Up"


class Purpose(StrEnum):
    MONEY_APPROVAL = "money_approval"


class Missing(StrEnum):
    """Why no fresh proof was found (the audit record's `outcome.step_up`)."""

    NO_CREDENTIAL = "no_credential"
    SESSION_PROOF_TOO_OLD = "session_proof_too_old"
    NO_GRANT = "no_grant"
    UNKNOWN_GRANT = "unknown_grant"
    OTHER_USER = "other_user"
    OTHER_TOKEN = "other_token"  # noqa: S105  (a reason, not a secret)
    EXPIRED = "expired"
    USED = "used"


# What to tell the approver, after "Approving a money-moving request needs a fresh proof of
# identity: ".
ADVICE = {
    Missing.NO_CREDENTIAL: "no credential was presented.",
    Missing.SESSION_PROOF_TOO_OLD: "confirm your password again.",
    Missing.NO_GRANT: "ask for a step-up grant with your password and send it with the "
    "approval (X-Step-Up).",
    Missing.UNKNOWN_GRANT: "the step-up grant is not one opsgate issued.",
    Missing.OTHER_USER: "the step-up grant belongs to someone else.",
    Missing.OTHER_TOKEN: "the step-up grant was issued to another of your tokens.",
    Missing.EXPIRED: "the step-up grant has expired; ask for a new one.",
    Missing.USED: "the step-up grant was already used; ask for a new one.",
}


@dataclass(frozen=True)
class IssuedStepUp:
    """A new grant; `secret` goes to the caller once and is never stored."""

    id: str
    secret: str
    expires_at: datetime


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(session: Session, actor: Actor, *, now: datetime, ttl: timedelta) -> IssuedStepUp:
    """Add a grant for `actor`, bound to the credential they authenticated with (not
    committed). Call only after checking their password again."""
    assert actor.credential_id is not None
    secret = STEP_UP_PREFIX + secrets.token_urlsafe(32)
    grant = StepUpGrant(
        id=new_id("stp"),
        secret_hash=_hash(secret),
        user_id=actor.id,
        credential_id=actor.credential_id,
        purpose=Purpose.MONEY_APPROVAL.value,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(grant)
    return IssuedStepUp(grant.id, secret, grant.expires_at)


def check(
    session: Session,
    actor: Actor,
    step_up: str | None,
    *,
    now: datetime,
    max_age: timedelta,
    approval_id: str,
) -> Missing | None:
    """None when `actor` holds a fresh proof for approving `approval_id`; a grant that is
    one is spent on it in this transaction (so it commits, or rolls back, with the
    decision). Otherwise why not."""
    if actor.credential_id is None:
        return Missing.NO_CREDENTIAL
    console = session.get(ConsoleSession, actor.credential_id)
    if console is not None and console.user_id == actor.id:
        return None if now - console.authenticated_at <= max_age else Missing.SESSION_PROOF_TOO_OLD
    if not step_up:
        return Missing.NO_GRANT
    grant = session.scalars(
        select(StepUpGrant)
        .where(StepUpGrant.secret_hash == _hash(step_up.strip()))
        .with_for_update()
    ).one_or_none()
    if grant is None or grant.purpose != Purpose.MONEY_APPROVAL:
        return Missing.UNKNOWN_GRANT
    if grant.user_id != actor.id:
        return Missing.OTHER_USER
    if grant.credential_id != actor.credential_id:
        return Missing.OTHER_TOKEN
    if grant.used_at is not None:
        return Missing.USED
    if grant.expires_at <= now or now - grant.created_at > max_age:
        return Missing.EXPIRED
    grant.used_at = now
    grant.used_for = approval_id
    return None
