"""Idempotency keys (IETF "The Idempotency-Key HTTP Header Field"; Stripe; Brandur Leach).

A key is scoped to its actor. `claim` takes it in a short transaction of its own; the
action's transaction stores the outcome with `complete`, so the stored answer commits if and
only if the effect does. Same key, same request: the stored answer is replayed. Same key,
another request: `idempotency_mismatch`. Same key while the first still runs:
`idempotency_in_flight`. Validation errors, limits and crashes release the key instead, so
a corrected retry may use it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsgate.core.canonical import digest
from opsgate.core.errors import (
    IdempotencyInFlight,
    IdempotencyKeyRequired,
    IdempotencyMismatch,
)
from opsgate.db.engine import Database
from opsgate.db.models import IdempotencyRecord

MAX_KEY_LENGTH = 255


class KeyStatus(StrEnum):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


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
                row.locked_at = now  # its process died before committing anything: take over
                row.request_id = request_id
                session.commit()
                return None
        raise IdempotencyInFlight("The Idempotency-Key is contended; retry shortly.")

    @staticmethod
    def complete(
        session: Session, actor_id: str, key: str, status: int, body: Mapping[str, Any]
    ) -> None:
        """Store the first answer, in the caller's transaction (with the effect it reports)."""
        stored = session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.actor_id == actor_id, IdempotencyRecord.key == key)
            .values(
                status=KeyStatus.COMPLETED,
                locked_at=None,
                response_status=status,
                response_body=dict(body),
            )
            .execution_options(synchronize_session=False)
        )
        assert stored.rowcount == 1, "complete() without a claim"  # type: ignore[attr-defined]

    def release(self, actor_id: str, key: str) -> None:
        """Forget an in-flight claim whose request produced no stored answer."""
        with self.db.writing() as session:
            session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.actor_id == actor_id,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.status == KeyStatus.IN_FLIGHT,
                )
            )
            session.commit()

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
