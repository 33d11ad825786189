"""Local passwords: Argon2id hashes, a timing-safe check, and throttled guessing.

Hashing is argon2-cffi's (its default RFC 9106 low-memory profile); nothing here hashes by
hand. A check for an unknown username, or for someone with no local password, still verifies
against a dummy hash, so that the answer takes as long as a real one and says nothing about
which usernames exist. Guessing is throttled per username and per IP address: after
`Throttle.max_failures` failures within `Throttle.window`, further attempts are refused until
the window has passed. Counting, checking and recording an attempt are serialised per
username and per address (`hold_attempts`), so parallel guesses cannot outrun the count.

What was typed as a username may be a password typed into the wrong field, so it is kept
only as a keyed hash (`typed_username_hash`, keyed by `Throttle.key`): the throttle counts by
it, and the audit trail names it only when it is the username of a real person.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from opsgate.core.identity.users import find_user
from opsgate.core.ids import new_id
from opsgate.db.models import LoginFailure, User, UserPassword

MIN_LENGTH = 12
MAX_LENGTH = 1024
# Long enough for any username the CLI accepts; what was typed is cut to this for storage.
USERNAME_LENGTH = 64

# Replaced only by tests, to make hashing cheap; production always uses the default profile.
HASHER = PasswordHasher()


class WeakPassword(ValueError):
    """A new password breaks the rules; the message says which."""


def check_strength(password: str, username: str) -> None:
    """Raise WeakPassword unless `password` is 12-1024 characters and not the username."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    if username.casefold() in password.casefold():
        raise WeakPassword("a password must not contain the username")


def hash_password(password: str) -> str:
    """An Argon2id hash of `password`, with a fresh salt and the current parameters."""
    return HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches `password_hash`; False for a mismatch or a bad hash."""
    try:
        return HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash("opsgate dummy password, never matched")


def dummy_hash() -> str:
    """A hash with the current parameters that no password is expected to match."""
    return _dummy_hash(HASHER)


def normalise_username(typed: str) -> str:
    return typed.strip().lower()[:USERNAME_LENGTH]


def set_password(session: Session, user: User, password: str, *, now: datetime) -> None:
    """Store a new password for `user` (not committed); raise WeakPassword first."""
    check_strength(password, user.username)
    stored = session.get(UserPassword, user.id)
    if stored is None:
        session.add(
            UserPassword(user_id=user.id, password_hash=hash_password(password), set_at=now)
        )
    else:
        stored.password_hash = hash_password(password)
        stored.set_at = now


@dataclass(frozen=True)
class StoredCredentials:
    """What a password check needs, read before the (slow) verification."""

    user: User | None
    password_hash: str | None


def load_credentials(session: Session, username: str) -> StoredCredentials:
    user = find_user(session, normalise_username(username))
    stored = session.get(UserPassword, user.id) if user is not None else None
    return StoredCredentials(user, stored.password_hash if stored else None)


def check(credentials: StoredCredentials, password: str) -> User | None:
    """The active person whose password this is, or None. Always runs one verification,
    against the dummy hash when there is no stored one, so every answer costs the same.
    A service account (a machine) never signs in, whatever password it may hold."""
    if credentials.user is None or credentials.password_hash is None:
        verify_password(dummy_hash(), password)
        return None
    if not verify_password(credentials.password_hash, password):
        return None
    user = credentials.user
    return user if user.is_active and not user.is_service_account else None


def rehash_if_outdated(session: Session, user: User, password: str) -> None:
    """After a successful check: store a new hash when the parameters have moved on."""
    stored = session.get(UserPassword, user.id)
    if stored is not None and HASHER.check_needs_rehash(stored.password_hash):
        stored.password_hash = hash_password(password)


# --- throttling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Throttle:
    max_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    # Keys the hash a typed username is kept as. The console derives it from the secret key,
    # so every process of a deployment counts the same username alike; the default (a fresh
    # random key) only serves code that never counts.
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)


def typed_username_hash(typed: str, key: bytes) -> str:
    """The keyed hash (HMAC-SHA256, hex) a typed username is counted and kept as."""
    return hmac.new(key, normalise_username(typed).encode(), hashlib.sha256).hexdigest()


def hold_attempts(session: Session, username_hash: str, ip: str | None) -> None:
    """Serialise attempts on this username and from this address until `session` ends.

    PostgreSQL: transaction-scoped advisory locks, taken in one order (no deadlock). SQLite
    needs none: a write session holds the single writer lock (`BEGIN IMMEDIATE`).
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({f"opsgate.login.username:{username_hash}", f"opsgate.login.ip:{ip or ''}"})
    for key in keys:
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
        )


@dataclass(frozen=True)
class Attempts:
    """Failures within the window, by the username tried and by the caller's address."""

    by_username: int
    by_ip: int

    def locked(self, throttle: Throttle) -> bool:
        return max(self.by_username, self.by_ip) >= throttle.max_failures


def count_failures(
    session: Session, username_hash: str, ip: str | None, throttle: Throttle, *, now: datetime
) -> Attempts:
    """Failures within the window for this (hashed) username and from this address."""
    since = now - throttle.window
    by_username = session.scalar(
        select(func.count())
        .select_from(LoginFailure)
        .where(LoginFailure.username == username_hash)
        .where(LoginFailure.occurred_at > since)
    )
    by_ip = (
        session.scalar(
            select(func.count())
            .select_from(LoginFailure)
            .where(LoginFailure.ip == ip)
            .where(LoginFailure.occurred_at > since)
        )
        if ip
        else 0
    )
    return Attempts(int(by_username or 0), int(by_ip or 0))


def record_attempt(session: Session, username_hash: str, ip: str | None, *, now: datetime) -> str:
    """Count an attempt as a failure before its password is checked, so that parallel
    guesses cannot outrun the throttle; `forget_failures` removes it on success."""
    attempt = LoginFailure(id=new_id("lgf"), username=username_hash, ip=ip, occurred_at=now)
    session.add(attempt)
    return attempt.id


def forget_failures(session: Session, username_hash: str) -> None:
    """A successful sign-in clears its username's failures (not its address's)."""
    session.execute(delete(LoginFailure).where(LoginFailure.username == username_hash))


def prune_failures(session: Session, throttle: Throttle, *, now: datetime) -> None:
    """Drop failures too old to count; the audit trail keeps every one of them."""
    session.execute(delete(LoginFailure).where(LoginFailure.occurred_at <= now - throttle.window))
