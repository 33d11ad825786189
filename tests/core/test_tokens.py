"""API tokens: only a hash is stored; unknown, expired, revoked and inactive fail alike."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from opsgate.core.clock import FrozenClock
from opsgate.core.errors import NotFound, Unauthenticated
from opsgate.core.identity import tokens
from opsgate.core.identity.tokens import LAST_USED_RESOLUTION, IssuedToken
from opsgate.core.identity.users import find_user
from opsgate.db.engine import Database
from opsgate.db.models import ApiToken, User
from tests.conftest import World

TTL = timedelta(days=1)


def issue(db: Database, username: str, now: datetime, ttl: timedelta = TTL) -> IssuedToken:
    with db.writing() as session:
        user = find_user(session, username)
        assert user is not None
        issued = tokens.issue_token(session, user, name="ci", now=now, ttl=ttl)
        session.commit()
    return issued


def authenticate(db: Database, secret: str | None, now: datetime) -> tokens.Authentication:
    with db.reading() as session:
        return tokens.authenticate(session, secret, now=now)


def refusal(db: Database, secret: str, now: datetime) -> tuple[type, str, str, int]:
    with pytest.raises(Unauthenticated) as caught:
        authenticate(db, secret, now)
    error = caught.value
    return type(error), error.detail, error.code.value, error.status


def last_used(db: Database, token_id: str) -> datetime | None:
    with db.reading() as session:
        token = session.get(ApiToken, token_id)
        assert token is not None
        return token.last_used_at


def touch(db: Database, token_id: str, now: datetime) -> None:
    with db.writing() as session:
        tokens.touch(session, token_id, now=now)
        session.commit()


def test_only_the_sha256_of_the_secret_is_stored(db: Database, clock: FrozenClock) -> None:
    issued = issue(db, "alice", clock.now())
    assert issued.secret.startswith(tokens.TOKEN_PREFIX)
    random_part = issued.secret[len(tokens.TOKEN_PREFIX) :]
    assert len(random_part) >= 43  # 256 random bits
    with db.reading() as session:
        row = (
            session.execute(select(ApiToken.__table__).where(ApiToken.id == issued.id))
            .one()
            ._mapping
        )
    assert row["secret_hash"] == hashlib.sha256(issued.secret.encode()).hexdigest()
    for column, value in row.items():
        text = str(value)
        assert issued.secret not in text, column
        assert random_part not in text, column
    assert issued.secret.startswith(row["hint"]) and len(row["hint"]) <= 8
    assert row["expires_at"] == clock.now() + TTL == issued.expires_at


def test_authenticate_returns_the_tokens_user_with_current_roles(
    db: Database, world: World, clock: FrozenClock
) -> None:
    issued = issue(db, "rita", clock.now())
    auth = authenticate(db, issued.secret, clock.now())
    assert auth.actor.id == world.user_ids["rita"]
    assert auth.actor.name == "Rita Chen"
    assert auth.actor.roles == frozenset({"risk_reviewer"})
    assert auth.actor.credential_id == issued.id


def test_each_token_proves_its_own_user(db: Database, world: World, clock: FrozenClock) -> None:
    for username, secret in world.tokens.items():
        assert authenticate(db, secret, clock.now()).actor.id == world.user_ids[username]


def test_unknown_expired_revoked_and_inactive_tokens_fail_identically(
    db: Database, clock: FrozenClock
) -> None:
    now = clock.now()
    valid = issue(db, "alice", now)
    expired = issue(db, "alice", now - TTL - timedelta(seconds=1))
    revoked = issue(db, "alice", now)
    inactive = issue(db, "bob", now)
    with db.writing() as session:
        tokens.revoke_token(session, revoked.id, now=now)
        bob = find_user(session, "bob")
        assert bob is not None
        bob.is_active = False
        session.commit()

    assert authenticate(db, valid.secret, now).actor.credential_id == valid.id
    answers = {
        "unknown": refusal(db, tokens.TOKEN_PREFIX + "x" * 43, now),
        "tampered": refusal(db, valid.secret[:-1] + ("A" if valid.secret[-1] != "A" else "B"), now),
        "expired": refusal(db, expired.secret, now),
        "revoked": refusal(db, revoked.secret, now),
        "inactive": refusal(db, inactive.secret, now),
    }
    assert len(set(answers.values())) == 1, answers
    assert answers["unknown"][2:] == ("unauthenticated", 401)


@pytest.mark.parametrize("secret", [None, ""])
def test_a_missing_secret_is_unauthenticated(db: Database, clock: FrozenClock, secret: str) -> None:
    with pytest.raises(Unauthenticated, match="required"):
        authenticate(db, secret, clock.now())


def test_expiry_follows_the_clock_passed_in(db: Database, clock: FrozenClock) -> None:
    issued = issue(db, "alice", clock.now())
    assert authenticate(db, issued.secret, issued.expires_at - timedelta(microseconds=1))
    with pytest.raises(Unauthenticated):
        authenticate(db, issued.secret, issued.expires_at)
    with pytest.raises(Unauthenticated):
        authenticate(db, issued.secret, issued.expires_at + timedelta(days=365))


def test_revocation_is_immediate_and_keeps_the_first_time(db: Database, clock: FrozenClock) -> None:
    issued = issue(db, "alice", clock.now())
    first = clock.now() + timedelta(minutes=5)
    with db.writing() as session:
        tokens.revoke_token(session, issued.id, now=first)
        session.commit()
    with db.writing() as session:
        again = tokens.revoke_token(session, issued.id, now=first + timedelta(hours=1))
        session.commit()
        assert again.revoked_at == first
    with pytest.raises(Unauthenticated):
        authenticate(db, issued.secret, first)


def test_revoking_an_unknown_token_is_not_found(db: Database, clock: FrozenClock) -> None:
    with db.writing() as session, pytest.raises(NotFound):
        tokens.revoke_token(session, "tok_missing", now=clock.now())


def test_deactivating_a_user_stops_every_token_of_theirs(
    db: Database, world: World, clock: FrozenClock
) -> None:
    with db.writing() as session:
        user = session.get(User, world.user_ids["olga"])
        assert user is not None
        user.is_active = False
        session.commit()
    with pytest.raises(Unauthenticated):
        authenticate(db, world.tokens["olga"], clock.now())
    assert authenticate(db, world.tokens["alice"], clock.now()).actor.id == world.user_ids["alice"]


def test_last_used_is_written_at_most_once_per_resolution(db: Database, clock: FrozenClock) -> None:
    start = clock.now()
    issued = issue(db, "alice", start)
    assert last_used(db, issued.id) is None
    assert authenticate(db, issued.secret, start).needs_touch is True
    # authenticate only reads.
    assert last_used(db, issued.id) is None

    touch(db, issued.id, start)
    assert last_used(db, issued.id) == start

    soon = start + LAST_USED_RESOLUTION - timedelta(seconds=1)
    assert authenticate(db, issued.secret, soon).needs_touch is False
    touch(db, issued.id, soon)
    assert last_used(db, issued.id) == start

    later = start + LAST_USED_RESOLUTION + timedelta(seconds=1)
    assert authenticate(db, issued.secret, later).needs_touch is True
    touch(db, issued.id, later)
    assert last_used(db, issued.id) == later
    assert authenticate(db, issued.secret, later).needs_touch is False


def test_repeated_touches_in_one_window_write_once(db: Database, clock: FrozenClock) -> None:
    start = clock.now()
    issued = issue(db, "alice", start)
    touch(db, issued.id, start)
    for offset in (10, 20, 30):
        touch(db, issued.id, start + timedelta(seconds=offset))
    assert last_used(db, issued.id) == start


def test_needs_touch_and_touch_agree_at_the_resolution_boundary(
    db: Database, clock: FrozenClock
) -> None:
    start = clock.now()
    issued = issue(db, "alice", start)
    touch(db, issued.id, start)
    boundary = start + LAST_USED_RESOLUTION
    needs = authenticate(db, issued.secret, boundary).needs_touch
    touch(db, issued.id, boundary)
    assert (last_used(db, issued.id) == boundary) == needs
