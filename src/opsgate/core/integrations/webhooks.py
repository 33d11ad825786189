"""Delivering the webhook outbox (core/integrations/outbox.py) after commit: claim, sign, POST,
record.

Any number of deliverers (threads, `opsgate serve` processes, `opsgate webhooks deliver`)
may run at once. A row is claimed in its own short transaction by setting `locked_until`
(PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED`, so deliverers pass each other's rows by;
SQLite: the single writer lock plus a conditional UPDATE), the POST happens outside any
transaction, and the result is recorded in another, only while the claim is still ours.

Requests follow the Standard Webhooks scheme (https://www.standardwebhooks.com):

    webhook-id: <event id, the same on every retry>
    webhook-timestamp: <Unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

with `X-Request-ID` and `traceparent` of the request that caused the event. The key is the
secret's UTF-8 bytes, or, for a secret written `whsec_<base64>`, the decoded bytes.
A failed attempt (no 2xx answer) is retried after 30 s doubled per attempt, capped at 1 h, the
upper half jittered; after the subscription's `max_attempts` the row is `dead` (a dead letter,
retried by hand with `opsgate webhooks retry`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from opsgate import __version__
from opsgate.core import tracing
from opsgate.core.background import BackgroundLoop
from opsgate.core.clock import Clock
from opsgate.core.errors import NotFound
from opsgate.core.integrations.config import Integrations, Webhook
from opsgate.core.integrations.outbox import OutboxStatus
from opsgate.core.integrations.webhook_messages import slack_message, with_links
from opsgate.core.tracing import TraceParent, new_span_id
from opsgate.db.engine import Database
from opsgate.db.models import OutboxEvent

log = structlog.get_logger("opsgate.webhooks")

BASE_DELAY = timedelta(seconds=30)
MAX_DELAY = timedelta(hours=1)
# A claim outlives the POST it covers by this much; then another deliverer may take it over.
CLAIM_MARGIN = timedelta(seconds=30)
MAX_ERROR_LENGTH = 500
S = OutboxStatus


def retry_delay(attempts: int, rng: random.Random) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 30 s doubled per attempt, capped at
    1 h, jittered within its upper half (so retries of many events spread out)."""
    ceiling = min(MAX_DELAY.total_seconds(), BASE_DELAY.total_seconds() * 2 ** (attempts - 1))
    return timedelta(seconds=ceiling / 2 + ceiling / 2 * rng.random())


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            pass  # not base64 after all: used as written, like any other secret
    return secret.encode()


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for `body` sent as `event_id` at `timestamp`."""
    message = f"{event_id}.{timestamp}.".encode() + body
    mac = hmac.new(_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def request_for(
    hook: Webhook, event: Mapping[str, Any], public_url: str | None, now: datetime
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery of `event` (a stored outbox payload) to `hook`."""
    document = with_links(event, public_url)
    if hook.format == "slack":
        document = slack_message(document)
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = int(now.timestamp())
    event_id = str(event["id"])
    headers = {
        "content-type": "application/json",
        "user-agent": f"opsgate-webhooks/{__version__}",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
    }
    if hook.secret:
        headers["webhook-signature"] = signature(hook.secret, event_id, timestamp, body)
    if event.get("request_id"):
        headers["x-request-id"] = str(event["request_id"])
    if event.get("trace_id"):
        headers["traceparent"] = TraceParent(str(event["trace_id"]), new_span_id()).header()
    return body, headers


@dataclass(frozen=True)
class Claim:
    """A row held by this deliverer until `lease` (copied out of its session)."""

    id: str
    event_type: str
    subscription: str
    payload: dict[str, Any]
    attempts: int
    lease: datetime


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status: int | None = None
    error: str | None = None
    final: bool = False  # no point retrying (e.g. the subscription is gone)


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    dead: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.dead


@dataclass
class Deliverer:
    """Delivers due outbox rows. Safe to run in several threads and processes at once."""

    db: Database
    integrations: Integrations
    clock: Clock
    public_url: str | None = None
    client: httpx.Client = field(
        default_factory=lambda: httpx.Client(follow_redirects=False, trust_env=True)
    )
    rng: random.Random = field(default_factory=random.Random)

    def deliver_due(self, stop: threading.Event | None = None, limit: int = 100) -> DeliveryReport:
        """Attempt every due row once (at most `limit`), one claim at a time; return counts.
        Never raises for a receiver's failure, only for the database's."""
        report = DeliveryReport()
        while report.attempted < limit and not (stop and stop.is_set()):
            claim = self._claim()
            if claim is None:
                break
            attempt = self._attempt(claim)
            status = self._record(claim, attempt)
            if status == S.DELIVERED:
                report.delivered += 1
            elif status == S.DEAD:
                report.dead += 1
            elif status == S.PENDING:
                report.retrying += 1
        return report

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Deliver until `stop` is set, polling every `interval` seconds when idle."""
        while not stop.is_set():
            try:
                busy = self.deliver_due(stop).attempted > 0
            except Exception:  # the database went away: keep the loop, try again later
                log.exception("webhook_delivery_error")
                busy = False
            if not busy:
                stop.wait(interval)

    def close(self) -> None:
        self.client.close()

    def _claim(self) -> Claim | None:
        with self.db.writing() as session:
            now = self.clock.now()
            free = or_(OutboxEvent.locked_until.is_(None), OutboxEvent.locked_until <= now)
            row = session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.status == S.PENDING, OutboxEvent.next_attempt_at <= now, free)
                .order_by(OutboxEvent.next_attempt_at, OutboxEvent.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            hook = self.integrations.webhooks.get(row.subscription)
            lease = now + CLAIM_MARGIN + timedelta(seconds=hook.timeout if hook else 0)
            won = session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == row.id, OutboxEvent.status == S.PENDING, free)
                .values(locked_until=lease)
                .execution_options(synchronize_session=False)
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return None
            claim = Claim(
                row.id, row.event_type, row.subscription, dict(row.payload), row.attempts, lease
            )
            session.commit()
            return claim

    def _attempt(self, claim: Claim) -> Attempt:
        hook = self.integrations.webhooks.get(claim.subscription)
        if hook is None:
            return Attempt(
                False,
                error=f"subscription {claim.subscription!r} is no longer configured",
                final=True,
            )
        if claim.event_type not in hook.events:
            return Attempt(
                False,
                error=f"subscription {claim.subscription!r} no longer receives {claim.event_type}",
                final=True,
            )
        body, headers = request_for(hook, claim.payload, self.public_url, self.clock.now())
        # The delivery joins the trace of the request that caused the event (with OpenTelemetry
        # on, the httpx span and its traceparent header then carry that trace too).
        trace_id = claim.payload.get("trace_id")
        scope = (
            tracing.activated(tracing.TraceParent(trace_id, tracing.new_span_id()))
            if isinstance(trace_id, str) and tracing.is_trace_id(trace_id)
            else nullcontext()
        )
        try:
            with scope:
                response = self.client.post(
                    hook.url, content=body, headers=headers, timeout=hook.timeout
                )
        except httpx.HTTPError as exc:
            # The URL may itself be a credential (Slack's are): never keep it.
            message = str(exc).replace(hook.url, f"<{hook.name}>") or type(exc).__name__
            return Attempt(False, error=f"{type(exc).__name__}: {message}"[:MAX_ERROR_LENGTH])
        if response.is_success:
            return Attempt(True, status=response.status_code)
        excerpt = response.text[:200].replace(hook.url, f"<{hook.name}>")
        return Attempt(
            False,
            status=response.status_code,
            error=f"HTTP {response.status_code}: {excerpt}"[:MAX_ERROR_LENGTH],
        )

    def _record(self, claim: Claim, attempt: Attempt) -> S | None:
        """Write the attempt's outcome while the claim is still ours; return the new status,
        or None when the claim had expired and another deliverer took the row."""
        hook = self.integrations.webhooks.get(claim.subscription)
        attempts = claim.attempts + (0 if attempt.final else 1)  # final: nothing was sent
        now = self.clock.now()
        values: dict[str, Any] = {
            "attempts": attempts,
            "locked_until": None,
            "last_status": attempt.status,
            "last_error": attempt.error,
        }
        if attempt.delivered:
            status = S.DELIVERED
            values["delivered_at"] = now
        elif attempt.final or hook is None or attempts >= hook.max_attempts:
            status = S.DEAD
        else:
            status = S.PENDING
            values["next_attempt_at"] = now + retry_delay(attempts, self.rng)
        with self.db.writing() as session:
            done = session.execute(
                update(OutboxEvent)
                .where(
                    OutboxEvent.id == claim.id,
                    OutboxEvent.status == S.PENDING,
                    OutboxEvent.locked_until == claim.lease,
                )
                .values(status=status.value, **values)
                .execution_options(synchronize_session=False)
            )
            session.commit()
        if done.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("webhook_claim_lost", outbox_id=claim.id, subscription=claim.subscription)
            return None
        event = "webhook_delivered" if attempt.delivered else "webhook_failed"
        (log.info if attempt.delivered else log.warning)(
            event,
            outbox_id=claim.id,
            event_id=claim.payload.get("id"),
            event_type=claim.event_type,
            subscription=claim.subscription,
            status=status.value,
            attempts=attempts,
            http_status=attempt.status,
            error=attempt.error,
        )
        return status


class DeliveryLoop(BackgroundLoop):
    """A deliverer on a daemon thread, for the web app: started with it, stopped with it."""

    name = "opsgate-webhooks"

    def __init__(self, deliverer: Deliverer, interval: float = 1.0) -> None:
        self.deliverer = deliverer
        self.interval = interval
        super().__init__()

    def work(self, stop: threading.Event) -> None:
        try:
            self.deliverer.run(stop, self.interval)
        finally:
            self.deliverer.close()


# --- dead letters and listing (opsgate webhooks …) --------------------------------------


def listing(session: Session, status: str | None = None, limit: int = 50) -> list[OutboxEvent]:
    """Outbox rows, newest first, optionally of one status."""
    stmt = select(OutboxEvent)
    if status:
        stmt = stmt.where(OutboxEvent.status == status)
    stmt = stmt.order_by(OutboxEvent.created_at.desc(), OutboxEvent.id.desc()).limit(limit)
    return list(session.scalars(stmt))


class NotDead(Exception):
    """Only a dead row may be retried by hand; a pending one is already being retried."""


def retry_dead(session: Session, row_id: str, now: datetime) -> OutboxEvent:
    """Make a dead row pending again, due now, with a fresh count of attempts (not
    committed). Raise NotFound or NotDead."""
    row = session.get(OutboxEvent, row_id, with_for_update=True)
    if row is None:
        raise NotFound(f"No outbox event {row_id[:64]}.")
    if row.status != S.DEAD:
        raise NotDead(f"Outbox event {row.id} is {row.status}, not dead.")
    row.status = S.PENDING.value
    row.attempts = 0
    row.next_attempt_at = now
    row.locked_until = None
    return row


def prune_delivered(session: Session, before: datetime) -> int:
    """Delete delivered rows delivered before `before` (not committed); return how many."""
    result = session.execute(
        delete(OutboxEvent).where(
            OutboxEvent.status == S.DELIVERED, OutboxEvent.delivered_at < before
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def start_delivery(
    db: Database, integrations: Integrations, clock: Clock, public_url: str | None
) -> DeliveryLoop | None:
    """Start delivering in the background when any webhook is configured; None otherwise."""
    if not integrations.webhooks:
        return None
    loop = DeliveryLoop(Deliverer(db, integrations, clock, public_url=public_url))
    loop.start()
    return loop
