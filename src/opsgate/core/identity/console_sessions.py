"""Console sessions: who is signed in to a browser, until when, and how they proved it.

A session row holds the SHA-256 of a random secret; the browser holds the session ID and the
secret (the web layer signs that cookie). A session ends on sign-out, on revocation, after
`idle_timeout` without a request and `absolute_timeout` after sign-in, whichever comes first.
Every sign-in, sign-out and refusal is audited (`auth.login`, `auth.logout`, `auth.session`,
`auth.reauth`).

`start_session` is the one way a session begins: the password sign-in below calls it, and so
does a single sign-on callback, with `method=SignInMethod.OIDC`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.identity import passwords
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.identity.passwords import Throttle
from opsgate.core.identity.users import find_user
from opsgate.core.ids import new_id
from opsgate.db.engine import Database
from opsgate.db.models import ConsoleSession, User, UserPassword, UserRole

# last_seen_at is refreshed at most this often, so that reads stay reads; the idle timeout
# is exact to within this.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


class SignInMethod(StrEnum):
    PASSWORD = "password"  # noqa: S105  (a method name, not a secret)
    OIDC = "oidc"


class SessionEnd(StrEnum):
    """Why a session ended (`console_sessions.revoked_reason`)."""

    SIGNED_OUT = "signed_out"
    IDLE_TIMEOUT = "idle_timeout"
    ABSOLUTE_TIMEOUT = "absolute_timeout"
    REPLACED = "replaced"
    REVOKED = "revoked"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105


class AuthAction(StrEnum):
    """Audit `action` values of authentication events."""

    LOGIN = "auth.login"
    LOGOUT = "auth.logout"
    SESSION = "auth.session"
    REAUTH = "auth.reauth"


@dataclass(frozen=True)
class SessionRules:
    idle_timeout: timedelta = timedelta(minutes=30)
    absolute_timeout: timedelta = timedelta(hours=12)
    # A money-moving approval needs a password check no older than this.
    reauth_after: timedelta = timedelta(minutes=15)
    throttle: Throttle = field(default_factory=Throttle)


@dataclass(frozen=True)
class IssuedSession:
    """A new session; `secret` goes to the browser and is never stored."""

    id: str
    secret: str
    actor: Actor
    expires_at: datetime


@dataclass(frozen=True)
class ConsoleAuthentication:
    actor: Actor
    session_id: str
    method: str
    authenticated_at: datetime
    needs_touch: bool


class SessionRefused(Exception):
    """The session cannot be used. `actor` is set when the session was real (for the audit
    record); `ends_now` when it has just timed out and should be marked ended."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        session_id: str | None = None,
        actor: Actor | None = None,
        ends_now: SessionEnd | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.session_id = session_id
        self.actor = actor
        self.ends_now = ends_now


class SignInRefused(Exception):
    """A password was not accepted. `reason`: `bad_credentials`, `throttled` or `no_password`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _actor(user: User, session_id: str) -> Actor:
    return Actor(
        id=user.id, name=user.display_name, roles=user.role_names(), credential_id=session_id
    )


def _audit(
    session: Session,
    action: AuthAction,
    result: AuditResult,
    *,
    actor: Actor | None,
    origin: Origin,
    now: datetime,
    policy_version: str | None,
    target: str | None = None,
    error_code: str | None = None,
    message: str | None = None,
    parameters: dict[str, Any] | None = None,
    outcome: dict[str, Any] | None = None,
) -> None:
    record(
        session,
        AuditEntry(
            action=action,
            result=result,
            target=target,
            error_code=error_code,
            error_message=message,
            parameters=parameters,
            outcome=outcome,
        ),
        actor=actor,
        origin=origin,
        policy_version=policy_version,
        now=now,
    )


def start_session(
    session: Session,
    user: User,
    *,
    method: SignInMethod,
    origin: Origin,
    now: datetime,
    rules: SessionRules,
    policy_version: str | None,
) -> IssuedSession:
    """Begin a session for `user`, who has just proved who they are by `method`, and audit
    the sign-in, both in `session` (not committed). The caller has checked the proof."""
    secret = secrets.token_urlsafe(32)
    row = ConsoleSession(
        id=new_id("ses"),
        secret_hash=_hash(secret),
        user_id=user.id,
        method=method.value,
        created_at=now,
        authenticated_at=now,
        last_seen_at=now,
        expires_at=now + rules.absolute_timeout,
        ip=origin.ip,
        user_agent=origin.user_agent[:512] if origin.user_agent else None,
    )
    session.add(row)
    actor = _actor(user, row.id)
    _audit(
        session,
        AuthAction.LOGIN,
        AuditResult.SUCCEEDED,
        actor=actor,
        origin=origin,
        now=now,
        policy_version=policy_version,
        target=f"user:{user.id}",
        parameters={"method": method.value},
        outcome={"session_id": row.id, "expires_at": row.expires_at.isoformat()},
    )
    return IssuedSession(id=row.id, secret=secret, actor=actor, expires_at=row.expires_at)


_SESSIONS = cast(Table, ConsoleSession.__table__)
_USERS = cast(Table, User.__table__)
_ROLES = cast(Table, UserRole.__table__)
_BY_ID = (
    select(
        _SESSIONS.c.id,
        _SESSIONS.c.secret_hash,
        _SESSIONS.c.method,
        _SESSIONS.c.authenticated_at,
        _SESSIONS.c.last_seen_at,
        _SESSIONS.c.expires_at,
        _SESSIONS.c.revoked_at,
        _USERS.c.id.label("user_id"),
        _USERS.c.display_name,
        _USERS.c.is_active,
        _ROLES.c.role,
    )
    .select_from(
        _SESSIONS.join(_USERS, _USERS.c.id == _SESSIONS.c.user_id).outerjoin(
            _ROLES, _ROLES.c.user_id == _USERS.c.id
        )
    )
    .where(_SESSIONS.c.id == bindparam("session_id"))
)
_SIGN_IN_AGAIN = "Your session has ended; sign in again."


def authenticate(
    session: Session, session_id: str, secret: str, *, now: datetime, rules: SessionRules
) -> ConsoleAuthentication:
    """The actor a session proves, with their current roles; raise SessionRefused for an
    unknown, ended, timed-out or deactivated one. Only reads (see `touch`)."""
    rows = session.connection().execute(_BY_ID, {"session_id": session_id}).all()
    if not rows or not hmac.compare_digest(rows[0].secret_hash, _hash(secret)):
        raise SessionRefused("unknown", _SIGN_IN_AGAIN)
    row = rows[0]
    actor = Actor(
        id=row.user_id,
        name=row.display_name,
        roles=frozenset(r.role for r in rows if r.role is not None),
        credential_id=row.id,
    )

    def refused(reason: str, message: str, ends: SessionEnd | None = None) -> SessionRefused:
        return SessionRefused(reason, message, session_id=row.id, actor=actor, ends_now=ends)

    if row.revoked_at is not None:
        raise refused("ended", _SIGN_IN_AGAIN)
    if now >= row.expires_at:
        hours = int(rules.absolute_timeout.total_seconds() // 3600)
        raise refused(
            "absolute_timeout",
            f"Sessions last at most {hours} hours; sign in again.",
            SessionEnd.ABSOLUTE_TIMEOUT,
        )
    if now - row.last_seen_at >= rules.idle_timeout:
        minutes = int(rules.idle_timeout.total_seconds() // 60)
        raise refused(
            "idle_timeout",
            f"You were inactive for {minutes} minutes, so you were signed out; sign in again.",
            SessionEnd.IDLE_TIMEOUT,
        )
    if not row.is_active:
        raise refused("inactive", "Your account is deactivated.", SessionEnd.REVOKED)
    return ConsoleAuthentication(
        actor=actor,
        session_id=row.id,
        method=row.method,
        authenticated_at=row.authenticated_at,
        needs_touch=now - row.last_seen_at >= LAST_SEEN_RESOLUTION,
    )


def touch(session: Session, session_id: str, *, now: datetime) -> None:
    """Record activity on a session (at most once per LAST_SEEN_RESOLUTION)."""
    session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
        .where(ConsoleSession.last_seen_at <= now - LAST_SEEN_RESOLUTION)
        .values(last_seen_at=now)
    )


def end_session(session: Session, session_id: str, reason: SessionEnd, *, now: datetime) -> bool:
    """End one session at once; False when it had already ended or does not exist."""
    done = session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason.value)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def end_user_sessions(session: Session, user_id: str, reason: SessionEnd, *, now: datetime) -> int:
    """End every open session of a user (revocation, a new password); return how many."""
    done = session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.user_id == user_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason.value)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


def needs_reauth(authenticated_at: datetime, *, now: datetime, rules: SessionRules) -> bool:
    """True when the last proof of identity is older than `rules.reauth_after`."""
    return now - authenticated_at > rules.reauth_after


# --- the flows the console runs ---------------------------------------------------------


def refuse(
    db: Database,
    refusal: SessionRefused,
    *,
    origin: Origin,
    now: datetime,
    policy_version: str | None,
    path: str,
) -> None:
    """Audit a refused session (ending it when it has just timed out)."""
    with db.writing() as session:
        if refusal.ends_now is not None and refusal.session_id is not None:
            end_session(session, refusal.session_id, refusal.ends_now, now=now)
        _audit(
            session,
            AuthAction.SESSION,
            AuditResult.DENIED,
            actor=refusal.actor,
            origin=origin,
            now=now,
            policy_version=policy_version,
            error_code=refusal.reason,
            message=refusal.message,
            parameters={"path": path[:200]},
        )
        session.commit()


def sign_out(
    db: Database, actor: Actor, *, origin: Origin, now: datetime, policy_version: str | None
) -> None:
    """End the actor's current session and audit it."""
    assert actor.credential_id is not None
    with db.writing() as session:
        end_session(session, actor.credential_id, SessionEnd.SIGNED_OUT, now=now)
        _audit(
            session,
            AuthAction.LOGOUT,
            AuditResult.SUCCEEDED,
            actor=actor,
            origin=origin,
            now=now,
            policy_version=policy_version,
            target=f"user:{actor.id}",
        )
        session.commit()


def _throttled_message(rules: SessionRules) -> str:
    minutes = int(rules.throttle.window.total_seconds() // 60)
    return (
        f"Too many failed sign-ins for this username or from this address. Try again in "
        f"{minutes} minutes, or ask an admin to set a new password."
    )


@dataclass(frozen=True)
class _Attempt:
    """One password check (a sign-in or a re-authentication), throttled and audited."""

    db: Database
    action: AuthAction
    username: str
    actor: Actor | None
    origin: Origin
    now: datetime
    rules: SessionRules
    policy_version: str | None

    def audit(self, session: Session, result: AuditResult, **fields: Any) -> None:
        _audit(
            session,
            self.action,
            result,
            actor=self.actor,
            origin=self.origin,
            now=self.now,
            policy_version=self.policy_version,
            **fields,
        )

    @property
    def username_hash(self) -> str:
        return passwords.typed_username_hash(self.username, self.rules.throttle.key)

    def typed(self, session: Session) -> dict[str, Any]:
        """What the trail keeps of the typed username: the username (and target) of a real
        person; otherwise only its keyed hash (not even its length), since it may be a
        password typed into the wrong field."""
        name = passwords.normalise_username(self.username)
        user = find_user(session, name)
        if user is not None:
            return {"target": f"user:{user.id}", "parameters": {"username": name}}
        return {
            "parameters": {
                "username_known": False,
                "username_hmac": self.username_hash,
            }
        }

    def failures(self, session: Session) -> passwords.Attempts:
        return passwords.count_failures(
            session, self.username_hash, self.origin.ip, self.rules.throttle, now=self.now
        )

    def begin(self) -> passwords.StoredCredentials:
        """Refuse (audited) when throttled; otherwise count the attempt, read credentials.
        Serialised per username and address, so no more than the limit get past the count."""
        with self.db.writing() as session:
            passwords.hold_attempts(session, self.username_hash, self.origin.ip)
            if self.failures(session).locked(self.rules.throttle):
                message = _throttled_message(self.rules)
                self.audit(
                    session,
                    AuditResult.DENIED,
                    error_code="throttled",
                    message=message,
                    **self.typed(session),
                )
                session.commit()
                raise SignInRefused("throttled", message)
            passwords.prune_failures(session, self.rules.throttle, now=self.now)
            passwords.record_attempt(session, self.username_hash, self.origin.ip, now=self.now)
            credentials = passwords.load_credentials(session, self.username)
            session.commit()
            return credentials

    def refuse(self, reason: str, message: str) -> SignInRefused:
        """Audit a failed check, and the lock it causes when it was the last one allowed."""
        with self.db.writing() as session:
            typed = self.typed(session)
            self.audit(session, AuditResult.DENIED, error_code=reason, message=message, **typed)
            attempts = self.failures(session)
            if attempts.locked(self.rules.throttle):
                self.audit(
                    session,
                    AuditResult.DENIED,
                    error_code="locked",
                    message=_throttled_message(self.rules),
                    outcome={
                        "failures_for_username": attempts.by_username,
                        "failures_from_ip": attempts.by_ip,
                        "window_seconds": int(self.rules.throttle.window.total_seconds()),
                    },
                    **typed,
                )
            session.commit()
        return SignInRefused(reason, message)


def sign_in_with_password(
    db: Database,
    username: str,
    password: str,
    *,
    origin: Origin,
    now: datetime,
    rules: SessionRules,
    policy_version: str | None,
    replaces: str | None = None,
) -> IssuedSession:
    """Check a username and password and start a session; raise SignInRefused (audited).

    Unknown usernames, wrong passwords and deactivated people get the same answer in the same
    time. The password is verified outside any transaction (it is slow on purpose).
    `replaces` names a session the browser still held; it is ended.
    """
    attempt = _Attempt(db, AuthAction.LOGIN, username, None, origin, now, rules, policy_version)
    user = passwords.check(attempt.begin(), password)
    if user is None:
        raise attempt.refuse("bad_credentials", "The username or password is not right.")
    with db.writing() as session:
        passwords.forget_failures(session, attempt.username_hash)
        passwords.rehash_if_outdated(session, user, password)
        if replaces:
            end_session(session, replaces, SessionEnd.REPLACED, now=now)
        issued = start_session(
            session,
            user,
            method=SignInMethod.PASSWORD,
            origin=origin,
            now=now,
            rules=rules,
            policy_version=policy_version,
        )
        session.commit()
    return issued


def reauthenticate(
    db: Database,
    actor: Actor,
    password: str,
    *,
    origin: Origin,
    now: datetime,
    rules: SessionRules,
    policy_version: str | None,
) -> None:
    """Check the signed-in person's password again and note it on their session; raise
    SignInRefused (audited). Throttled like a sign-in."""
    assert actor.credential_id is not None
    with db.reading() as session:
        user = session.get(User, actor.id)
        has_password = user is not None and session.get(UserPassword, actor.id) is not None
        username = user.username if user is not None else actor.id
    attempt = _Attempt(db, AuthAction.REAUTH, username, actor, origin, now, rules, policy_version)
    if not has_password:
        raise attempt.refuse(
            "no_password", "You have no opsgate password; sign out and sign in again to confirm."
        )
    if passwords.check(attempt.begin(), password) is None:
        raise attempt.refuse("bad_credentials", "That password is not right.")
    with db.writing() as session:
        passwords.forget_failures(session, attempt.username_hash)
        session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id == actor.credential_id)
            .values(authenticated_at=now, last_seen_at=now)
        )
        attempt.audit(session, AuditResult.SUCCEEDED, target=f"user:{actor.id}")
        session.commit()
