"""One action call in ONE transaction: the idempotency key, the target, the handler, the answer.

    take the key's lock ─► known key? ─ other request: 422 idempotency_mismatch
                          │            └ completed: its stored answer, replayed
                          └ new: claim it ─► lock the target ─► handler (in a savepoint)
                                 ─► answer stored with the effect ─► commit

Concurrent calls with one key queue on the key's lock (PostgreSQL: a transaction-scoped
advisory lock; SQLite: `BEGIN IMMEDIATE`, one writer at a time) and get the first one's
answer; calls with other keys on one target queue on its row lock, and the domain refuses
what would exceed it. Lock waits are bounded: a key still held when the wait runs out is
`idempotency_in_flight` (409); any other lock wait running out is `unavailable` (503).

Nothing commits after the request's signature window has closed (`Call.deadline`): opsgate
settles a call this service says it never saw as not executed once that window has passed
(docs/backends.md), so a request that was slow to get its locks must not commit later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from opsgate.core.actions.registry import ActionContext, Payload, TargetRef
from opsgate.core.canonical import canonical_json
from opsgate.core.clock import Clock
from opsgate.core.errors import DomainError
from opsgate.core.identity.actors import Actor
from opsgate.db.engine import Database
from opsgate_demo.ledger_service.answers import Answer, LedgerProblem, problem
from opsgate_demo.ledger_service.catalog import LedgerAction
from opsgate_demo.ledger_service.envelope import ActionCall
from opsgate_demo.ledger_service.models import LedgerOperation, OperationStatus

log = structlog.get_logger("opsgate.ledger")

LOCK_WAIT_SECONDS = 10


@dataclass(frozen=True)
class Call:
    """A verified, validated action call."""

    action: LedgerAction
    envelope: ActionCall
    payload: Payload
    target: TargetRef
    key: str
    # The X-Request-ID of this HTTP request (problem bodies carry it).
    request_id: str
    # Unix seconds: the end of the signature window; nothing commits after it.
    deadline: float


class _KeyBusy(Exception):
    """Another transaction held the key for longer than the lock wait."""


class Ledger:
    """Runs action calls and answers questions about keys, against the service's database."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def perform(self, call: Call) -> Answer:
        """The answer to `call`: run now, replayed, or refused. Logs one `operation` line."""
        try:
            answer, outcome = self._perform(call)
        except _KeyBusy:
            answer, outcome = (
                problem(
                    409,
                    LedgerProblem.IDEMPOTENCY_IN_FLIGHT,
                    "The first request with this Idempotency-Key is still running; retry.",
                    call.request_id,
                ),
                "in_flight",
            )
        except OperationalError:
            # A lock wait ran out (or SQLite's busy timeout): the transaction was rolled back.
            answer, outcome = (
                problem(
                    503,
                    LedgerProblem.UNAVAILABLE,
                    "The ledger is too busy to run this now; nothing was done. Retry.",
                    call.request_id,
                ),
                "unavailable",
            )
        log.info(
            "operation",
            action=call.action.spec.name,
            target=str(call.target),
            key=call.key,
            outcome=outcome,
            replayed=answer.replayed,
            http_status=answer.status,
        )
        return answer

    def _perform(self, call: Call) -> tuple[Answer, str]:
        fingerprint = call.envelope.fingerprint()
        with self.db.writing() as session:
            self._lock_key(session, call.key)
            row = session.get(LedgerOperation, call.key)
            if row is not None:
                return self._known(row, fingerprint, call)
            now = self.clock.now()
            row = LedgerOperation(
                key=call.key,
                request_hash=fingerprint,
                action=call.action.spec.name,
                target=str(call.target),
                request_id=call.envelope.request_id,
                status=OperationStatus.IN_PROGRESS,
                created_at=now,
            )
            session.add(row)
            session.flush()
            answer, outcome = self._run(session, call, row)
            row.status = OperationStatus.COMPLETED
            row.http_status = answer.status
            row.response = dict(answer.body)
            row.completed_at = now
            session.flush()
            if self.clock.now().timestamp() > call.deadline:
                session.rollback()
                return (
                    problem(
                        503,
                        LedgerProblem.UNAVAILABLE,
                        "The request's signature window closed before it could commit; "
                        "nothing was done. Retry with a fresh signature.",
                        call.request_id,
                    ),
                    "window_closed",
                )
            session.commit()
            return answer, outcome

    def _lock_key(self, session: Session, key: str) -> None:
        if self.db.dialect != "postgresql":
            return  # SQLite: BEGIN IMMEDIATE, on the first statement, is the lock
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'"))
        try:
            session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
            )
        except OperationalError as exc:
            raise _KeyBusy from exc

    @staticmethod
    def _known(row: LedgerOperation, fingerprint: str, call: Call) -> tuple[Answer, str]:
        if row.request_hash != fingerprint:
            return (
                problem(
                    422,
                    LedgerProblem.IDEMPOTENCY_MISMATCH,
                    "This Idempotency-Key was already used for a different request.",
                    call.request_id,
                ),
                "mismatch",
            )
        if row.status != OperationStatus.COMPLETED or row.response is None:
            # Claims commit only as completed; one seen in progress is still being run.
            raise _KeyBusy
        assert row.http_status is not None
        return Answer(row.http_status, row.response, replayed=True), "replayed"

    def _run(self, session: Session, call: Call, row: LedgerOperation) -> tuple[Answer, str]:
        """Run the handler on the locked target; the answer to store, and its outcome."""
        kind, spec, envelope = call.action.kind, call.action.spec, call.envelope
        target = kind.load(session, call.target.id, True)
        if target is None:
            detail = f"No {call.target.kind} {call.target.id} exists."
            return (
                problem(404, LedgerProblem.TARGET_NOT_FOUND, detail, call.request_id),
                "target_not_found",
            )
        before = kind.snapshot(target)
        ctx = ActionContext(
            session=session,
            actor=Actor(
                id=envelope.actor.id,
                name=envelope.actor.name,
                roles=frozenset(envelope.actor.roles),
            ),
            action=spec.name,
            request_id=envelope.effect_request_id,
            reason=envelope.reason,
            now=row.created_at,
            approval_id=envelope.approval_id,
        )
        try:
            with session.begin_nested():
                outcome = spec.handler(ctx, target, call.payload)
                session.flush()
        except DomainError as exc:
            return problem(409, exc.reason, exc.message, call.request_id), "rejected"
        except IntegrityError:
            detail = "The ledger already holds this effect (its reference was posted before)."
            return (
                problem(409, LedgerProblem.DUPLICATE_EFFECT, detail, call.request_id),
                "rejected",
            )
        changed = call.action.changed(session, target)
        for _kind, obj in changed:
            session.refresh(obj)
        body: dict[str, Any] = {
            "result": dict(outcome.result),
            "before": before,
            "after": kind.snapshot(target),
            "state": {f"{k.name}:{obj.id}": k.snapshot(obj) for k, obj in changed},
        }
        # Plain JSON values only, so the stored answer replays exactly as first given.
        return Answer(200, json.loads(canonical_json(body))), "succeeded"

    def lookup(self, key: str, request_id: str) -> Answer:
        """What became of `key`: completed (with the stored answer), in progress, or unknown.

        A key some transaction still holds is waited for (SQLite) or reported in progress
        (PostgreSQL), so 'unknown' means no request with it has committed or is running."""
        with self.db.reading() as session:
            row = session.get(LedgerOperation, key)
            if row is not None and row.status == OperationStatus.COMPLETED:
                return _completed(row)
        try:
            with self.db.writing() as session:
                if self.db.dialect == "postgresql" and not session.scalar(
                    text("SELECT pg_try_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": key},
                ):
                    return Answer(200, {"status": OperationStatus.IN_PROGRESS.value})
                row = session.get(LedgerOperation, key)
                session.rollback()
        except OperationalError:  # SQLite: the writer lock stayed taken past the busy timeout
            return Answer(200, {"status": OperationStatus.IN_PROGRESS.value})
        if row is None:
            detail = "No request used this key."
            return problem(404, LedgerProblem.OPERATION_NOT_FOUND, detail, request_id)
        if row.status == OperationStatus.COMPLETED:
            return _completed(row)
        return Answer(200, {"status": OperationStatus.IN_PROGRESS.value})


def _completed(row: LedgerOperation) -> Answer:
    return Answer(
        200,
        {
            "status": OperationStatus.COMPLETED.value,
            "http_status": row.http_status,
            "response": row.response,
        },
    )
