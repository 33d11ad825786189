"""Step-up grants for tests whose subject is not step-up itself: issued through core, as
`POST /api/v1/auth/step-up` issues them once the password is checked (tests/web/
test_api_step_up.py covers that route)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from opsgate.core.approvals import step_up
from opsgate.core.identity import tokens
from opsgate.core.identity.actors import Actor
from opsgate.db.engine import Database

TEST_CREDENTIAL = "tok_test_step_up"


def stepped_up(db: Database, actor: Actor, now: datetime) -> tuple[Actor, str]:
    """`actor` with a credential, and a fresh step-up grant bound to it."""
    actor = replace(actor, credential_id=actor.credential_id or TEST_CREDENTIAL)
    with db.writing() as session:
        issued = step_up.issue(session, actor, now=now, ttl=timedelta(minutes=5))
        session.commit()
    return actor, issued.secret


def step_up_header(db: Database, token: str, now: datetime | None = None) -> dict[str, str]:
    """An `X-Step-Up` header for the bearer `token`'s holder."""
    now = now or datetime.now(UTC)
    with db.reading() as session:
        actor = tokens.authenticate(session, token, now=now).actor
    _, secret = stepped_up(db, actor, now)
    return {step_up.STEP_UP_HEADER: secret}
