"""API tokens: created with a secret shown once, stored as a hash, expiring, revocable.

A token belongs to its person. With self-service tokens on (`OPSGATE_SELF_SERVICE_TOKENS`,
docs/operations.md), people mint their own from the console while signed in, and the CLI
mints only for service accounts that approve nothing (`check_cli_issue`): someone with
shell access cannot give themselves another person's credential. Every token created is
audited (`token.create`, with the OS user and host when the CLI made it), recorded on the
token (shown on its owner's console page) and announced as a `token.created` webhook event.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.errors import NotFound, Unauthenticated
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.ids import new_id
from opsgate.core.integrations.config import Integrations
from opsgate.core.integrations.outbox import enqueue
from opsgate.db.models import ApiToken, User, UserRole

TOKEN_PREFIX = "ogt_"  # noqa: S105  (a public prefix, not a secret)
# last_used_at is a hint for humans reviewing tokens, not an exact counter: writing it on
# every request would turn every read into a write, so it is refreshed at most this often.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# The webhook event announcing a new token to its owner.
TOKEN_CREATED = "token.created"  # noqa: S105  (an event name, not a secret)
NAME_LENGTH = 100


class TokenSource(StrEnum):
    """How a token was created (`api_tokens.created_via`)."""

    CONSOLE = "console"
    CLI = "cli"


@dataclass(frozen=True)
class Minter:
    """Who is creating a token, and from where: the person in the console, or an OS user on
    a host running the CLI."""

    source: TokenSource
    os_user: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    id: str
    secret: str
    expires_at: datetime


def issue_token(
    session: Session,
    user: User,
    *,
    name: str,
    now: datetime,
    ttl: timedelta,
    minter: Minter | None = None,
) -> IssuedToken:
    """Create a token for `user`; the returned secret is never stored and cannot be shown again."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        user_id=user.id,
        name=name[:NAME_LENGTH],
        secret_hash=hash_secret(secret),
        hint=secret[: len(TOKEN_PREFIX) + 4],
        created_at=now,
        expires_at=now + ttl,
        created_via=minter.source.value if minter else None,
        created_os_user=minter.os_user[:200] if minter and minter.os_user else None,
        created_host=minter.host[:255] if minter and minter.host else None,
    )
    session.add(token)
    return IssuedToken(id=token.id, secret=secret, expires_at=token.expires_at)


class CliTokenRefused(Exception):
    """The CLI may not mint this token; `reason` is the audit error code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_cli_issue(user: User, *, self_service: bool, approves: bool) -> None:
    """Raise CliTokenRefused unless the CLI may mint a token for `user`. With self-service
    tokens on, it may only for a service account, and never for one whose roles approve
    anything (a machine's token must not be a way to a second approval). Off: for anyone."""
    if not self_service:
        return
    if not user.is_service_account:
        raise CliTokenRefused(
            "self_service_required",
            f"{user.username} is a person: people create their own API tokens in the console "
            "(API tokens page, while signed in). The CLI creates tokens only for service "
            "accounts (`opsgate users create NAME --service-account`).",
        )
    if approves:
        raise CliTokenRefused(
            "service_account_approves",
            f"{user.username} is a service account whose roles may approve requests; a "
            "machine never approves, so the CLI will not create a token for it.",
        )


def create_token(
    session: Session,
    user: User,
    *,
    name: str,
    ttl: timedelta,
    minter: Minter,
    actor: Actor,
    origin: Origin,
    integrations: Integrations,
    policy_version: str | None,
    now: datetime,
) -> IssuedToken:
    """Issue a token for `user`, audit it (`token.create`) and announce it to its owner
    (`token.created` webhook event), all in `session` (not committed)."""
    issued = issue_token(session, user, name=name, now=now, ttl=ttl, minter=minter)
    created: dict[str, str | None] = {
        "token_id": issued.id,
        "name": name[:NAME_LENGTH],
        "expires_at": issued.expires_at.isoformat(),
        "created_via": minter.source.value,
    }
    if minter.source == TokenSource.CLI:
        created |= {"os_user": minter.os_user, "host": minter.host}
    record(
        session,
        AuditEntry(
            action="token.create",
            result=AuditResult.SUCCEEDED,
            target=f"user:{user.id}",
            parameters=created,
        ),
        actor=actor,
        origin=origin,
        policy_version=policy_version,
        now=now,
    )
    enqueue(
        session,
        integrations,
        TOKEN_CREATED,
        {
            "token": created,
            "user": {"id": user.id, "username": user.username, "name": user.display_name},
        },
        request_id=origin.request_id,
        trace_id=origin.trace_id,
        now=now,
    )
    return issued


def revoke_token(session: Session, token_id: str, *, now: datetime) -> ApiToken:
    """Revoke a token at once; raise NotFound when no such token exists."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = now
    return token


def revoke_own_token(
    session: Session,
    actor: Actor,
    token_id: str,
    *,
    origin: Origin,
    policy_version: str | None,
    now: datetime,
) -> ApiToken:
    """Revoke one of `actor`'s own tokens and audit it (`token.revoke`), in `session` (not
    committed); raise NotFound for a token that is not theirs, as for one that does not exist."""
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != actor.id:
        raise NotFound(f"You have no token {token_id}.")
    if token.revoked_at is None:
        token.revoked_at = now
    record(
        session,
        AuditEntry(
            action="token.revoke",
            result=AuditResult.SUCCEEDED,
            target=f"user:{actor.id}",
            parameters={"token_id": token.id},
        ),
        actor=actor,
        origin=origin,
        policy_version=policy_version,
        now=now,
    )
    return token


def tokens_of(session: Session, user_id: str | None = None) -> list[ApiToken]:
    """Tokens, newest first: one user's, or everyone's."""
    stmt = select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    if user_id is not None:
        stmt = stmt.where(ApiToken.user_id == user_id)
    return list(session.scalars(stmt))


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
