"""API tokens: created with a secret shown once, stored as a hash, expiring, revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from opsgate.core.actors import Actor
from opsgate.core.errors import NotFound, Unauthenticated
from opsgate.core.ids import new_id
from opsgate.db.models import ApiToken, User, UserRole

TOKEN_PREFIX = "ogt_"  # noqa: S105  (a public prefix, not a secret)
# last_used_at is a hint for humans reviewing tokens, not an exact counter: writing it on
# every request would turn every read into a write, so it is refreshed at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    id: str
    secret: str
    expires_at: datetime


def issue_token(
    session: Session, user: User, *, name: str, now: datetime, ttl: timedelta
) -> IssuedToken:
    """Create a token for `user`; the returned secret is never stored and cannot be shown again."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        user_id=user.id,
        name=name,
        secret_hash=hash_secret(secret),
        hint=secret[: len(TOKEN_PREFIX) + 4],
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(token)
    return IssuedToken(id=token.id, secret=secret, expires_at=token.expires_at)


def revoke_token(session: Session, token_id: str, *, now: datetime) -> ApiToken:
    """Revoke a token at once; raise NotFound when no such token exists."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = now
    return token


_TOKENS = cast(Table, ApiToken.__table__)
_USERS = cast(Table, User.__table__)
_ROLES = cast(Table, UserRole.__table__)
_BY_SECRET = (
    select(
        _TOKENS.c.id,
        _TOKENS.c.expires_at,
        _TOKENS.c.revoked_at,
        _TOKENS.c.last_used_at,
        _USERS.c.id.label("user_id"),
        _USERS.c.display_name,
        _USERS.c.is_active,
        _ROLES.c.role,
    )
    .select_from(
        _TOKENS.join(_USERS, _USERS.c.id == _TOKENS.c.user_id).outerjoin(
            _ROLES, _ROLES.c.user_id == _USERS.c.id
        )
    )
    .where(_TOKENS.c.secret_hash == bindparam("secret_hash"))
)
_REFUSED = "The bearer token is unknown, expired or revoked."


@dataclass(frozen=True)
class Authentication:
    actor: Actor
    # True when the token's last_used_at is older than LAST_USED_RESOLUTION.
    needs_touch: bool


def authenticate(session: Session, secret: str | None, *, now: datetime) -> Authentication:
    """Return the actor a bearer secret proves; raise Unauthenticated for anything else.

    The same message answers unknown, expired, revoked and inactive credentials, so that a
    caller learns nothing about which tokens exist. Only reads; see `touch`.
    """
    if not secret:
        raise Unauthenticated("A bearer token is required (Authorization: Bearer <token>).")
    # One plain SQL round trip (a row per role): this runs on every API request.
    rows = session.connection().execute(_BY_SECRET, {"secret_hash": hash_secret(secret)}).all()
    if not rows:
        raise Unauthenticated(_REFUSED)
    token = rows[0]
    if token.revoked_at is not None or token.expires_at <= now or not token.is_active:
        raise Unauthenticated(_REFUSED)
    actor = Actor(
        id=token.user_id,
        name=token.display_name,
        roles=frozenset(row.role for row in rows if row.role is not None),
        credential_id=token.id,
    )
    stale = token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION
    return Authentication(actor=actor, needs_touch=stale)


def touch(session: Session, token_id: str, *, now: datetime) -> None:
    """Record that a token was used (at most once per LAST_USED_RESOLUTION)."""
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id)
        .where(
            (ApiToken.last_used_at.is_(None))
            | (ApiToken.last_used_at <= now - LAST_USED_RESOLUTION)
        )
        .values(last_used_at=now)
    )
