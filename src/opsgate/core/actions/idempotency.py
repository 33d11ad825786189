"""Idempotency keys (IETF "The Idempotency-Key HTTP Header Field"; Stripe; Brandur Leach).

A key is scoped to its actor. `claim` takes it in a short transaction of its own; the
action's transaction stores the outcome with `complete`, so the stored answer commits if and
only if the effect does. Same key, same request: the stored answer is replayed. Same key,
another request: `idempotency_mismatch`. Same key while the first still runs:
`idempotency_in_flight`. Validation errors, limits and crashes release the key instead, so
a corrected retry may use it again.

A claim is fenced by its owner, the request ID that holds it. A claim older than the lock
timeout may be taken over by a retry (its request is presumed dead), but a request that was
only slow is not dead: `complete`, `hold` and `release` act only for the owner of a claim
still in flight, and otherwise raise `ClaimLost` (or do nothing), so the slow request's
transaction rolls back and never commits a second effect. The server also bounds its action
transactions' lock waits and statements below the takeover timeout (db/engine.py), so a slow
owner normally gives up before a retry may take over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from opsgate.core.canonical import digest
from opsgate.core.errors import (
    IdempotencyInFlight,
    IdempotencyKeyRequired,
    IdempotencyMismatch,
)
from opsgate.db.engine import Database
from opsgate.db.models import IdempotencyRecord

log = structlog.get_logger("opsgate.idempotency")

MAX_KEY_LENGTH = 255


class KeyStatus(StrEnum):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


class ClaimLost(Exception):
    """This request no longer owns its key's claim (a retry took it over, or it is gone):
    its transaction must roll back, and its caller is told what became of the key."""


@dataclass(frozen=True)
class Replay:
    """The stored first answer to a request."""

    status: int
    body: dict[str, Any]


def check_key(key: str | None, *, required: bool) -> str | None:
    """Return a usable key (or None when optional and absent); raise IdempotencyKeyRequired."""
    if key is None or key == "":
        if required:
            raise IdempotencyKeyRequired(
                "This action moves money: send an Idempotency-Key header (1-255 characters) "
                "and reuse it when you retry."
            )
        return None
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise IdempotencyKeyRequired("An Idempotency-Key is 1-255 printable characters.")
    return key


def request_hash(action: str, envelope: Mapping[str, Any]) -> str:
    """What makes two requests 'the same': the action and its whole envelope."""
    return digest({"action": action, "envelope": dict(envelope)})


class Idempotency:
    def __init__(self, db: Database, *, retention: timedelta, lock_timeout: timedelta) -> None:
        self.db = db
        self.retention = retention
        self.lock_timeout = lock_timeout

    def claim(
        self, actor_id: str, key: str, action: str, fingerprint: str, request_id: str, now: datetime
    ) -> Replay | None:
        """Take the key for this request (None), or return the stored answer to replay.

        Raises IdempotencyMismatch or IdempotencyInFlight.
        """
        for _attempt in range(3):
            with self.db.writing() as session:
                row = session.get(IdempotencyRecord, (actor_id, key), with_for_update=True)
                if row is not None and row.expires_at <= now:
                    session.delete(row)
                    session.flush()
                    row = None
                if row is None:
                    session.add(
                        IdempotencyRecord(
                            actor_id=actor_id,
                            key=key,
                            action=action,
                            request_hash=fingerprint,
                            request_id=request_id,
                            status=KeyStatus.IN_FLIGHT,
                            locked_at=now,
                            created_at=now,
                            expires_at=now + self.retention,
                        )
                    )
                    try:
                        session.commit()
                    except IntegrityError:  # a concurrent request claimed it first
                        session.rollback()
                        continue
                    return None
                if row.request_hash != fingerprint:
                    raise IdempotencyMismatch(
                        "This Idempotency-Key was already used for a different request; "
                        "use a new key for a new request."
                    )
                if row.status == KeyStatus.COMPLETED:
                    assert row.response_status is not None and row.response_body is not None
                    return Replay(row.response_status, dict(row.response_body))
                if row.locked_at is not None and now - row.locked_at < self.lock_timeout:
                    raise IdempotencyInFlight(
                        "The first request with this Idempotency-Key is still running; retry "
                        "shortly to get its answer."
                    )
                # Presumed dead. If it was only slow, the fence (a new owner) keeps it from
                # committing: complete() and hold() will raise ClaimLost for it.
                row.locked_at = now
                row.request_id = request_id
                session.commit()
                return None
        raise IdempotencyInFlight("The Idempotency-Key is contended; retry shortly.")

    @staticmethod
    def complete(
        session: Session,
        actor_id: str,
        key: str,
        owner: str,
        status: int,
        body: Mapping[str, Any],
    ) -> None:
        """Store the first answer, in the caller's transaction (with the effect it reports).

        Raises ClaimLost unless `owner` still holds the key in flight; the caller must then
        roll back."""
        stored = session.execute(
            update(IdempotencyRecord)
            .where(*_owned(actor_id, key, owner))
            .values(
                status=KeyStatus.COMPLETED,
                locked_at=None,
                response_status=status,
                response_body=dict(body),
            )
            .execution_options(synchronize_session=False)
        )
        if stored.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(f"the claim on this Idempotency-Key is no longer held by {owner}")

    @staticmethod
    def hold(session: Session, actor_id: str, key: str, owner: str, now: datetime) -> None:
        """Renew `owner`'s claim in the caller's transaction (before work that outlives it,
        such as a backend call); raise ClaimLost when it no longer holds the key."""
        renewed = session.execute(
            update(IdempotencyRecord)
            .where(*_owned(actor_id, key, owner))
            .values(locked_at=now)
            .execution_options(synchronize_session=False)
        )
        if renewed.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(f"the claim on this Idempotency-Key is no longer held by {owner}")

    def release(self, actor_id: str, key: str, owner: str) -> None:
        """Forget `owner`'s in-flight claim, whose request produced no stored answer. A
        claim taken over by another request is left alone. If the database cannot be
        reached, the claim stays until the lock timeout lets a retry take it over."""
        try:
            with self.db.writing() as session:
                session.execute(delete(IdempotencyRecord).where(*_owned(actor_id, key, owner)))
                session.commit()
        except OperationalError:
            log.warning("idempotency_release_failed", actor=actor_id, owner=owner)

    def stored_answer(self, actor_id: str, key: str) -> Replay | None:
        """The answer stored for the key, or None while it is in flight or free."""
        with self.db.reading() as session:
            row = session.get(IdempotencyRecord, (actor_id, key))
            if row is None or row.status != KeyStatus.COMPLETED:
                return None
            assert row.response_status is not None and row.response_body is not None
            return Replay(row.response_status, dict(row.response_body))

    def prune(self, now: datetime) -> int:
        """Delete stored answers past their retention; return how many."""
        with self.db.writing() as session:
            expired = list(
                session.scalars(
                    select(IdempotencyRecord.key).where(IdempotencyRecord.expires_at <= now)
                )
            )
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now))
            session.commit()
        return len(expired)


def _owned(actor_id: str, key: str, owner: str) -> tuple[ColumnElement[bool], ...]:
    """The claim on `key` that `owner` still holds in flight (the fence)."""
    return (
        IdempotencyRecord.actor_id == actor_id,
        IdempotencyRecord.key == key,
        IdempotencyRecord.status == KeyStatus.IN_FLIGHT,
        IdempotencyRecord.request_id == owner,
    )
