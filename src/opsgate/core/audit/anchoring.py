"""When the audit chain's head is anchored, and how the chain is checked against its anchors
(DESIGN.md invariant 11; the anchors themselves: core/audit/anchors.py).

Every `opsgate serve` process runs an AnchorLoop: it anchors the head as soon as
`every_records` records follow the last anchor, and a moved head at least every `interval`;
`opsgate audit anchor` does it by hand or from cron. Before signing, the records since the
last anchor are checked to chain onto it, so an anchor never vouches for a rewrite. Each
anchor goes to the file sink and, as an `audit.anchor` webhook event, to an external log.

`verify_anchored` is what `audit verify` and `GET /audit/verify` run: the chain must extend
the latest anchor (whose signature must verify), and anchoring that stopped is a finding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.audit import chain as audit_chain
from opsgate.core.audit.anchors import (
    Anchor,
    AnchorError,
    AnchorKey,
    AnchorSink,
    parse_public_keys,
    signature_problem,
)
from opsgate.core.audit.chain import Checkpoint, Verification
from opsgate.core.background import BackgroundLoop
from opsgate.core.clock import Clock
from opsgate.core.integrations.config import Integrations
from opsgate.core.integrations.outbox import EventType, enqueue
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from opsgate.settings import Settings

log = structlog.get_logger("opsgate.anchoring")
GENESIS_POINT = Checkpoint(0, audit_chain.GENESIS)
# Anchoring is late when a record has waited this many intervals (plus the grace) for one.
LATE_INTERVALS = 2
LATE_GRACE = timedelta(minutes=1)


class AnchorRefused(Exception):
    """The records since the last anchor do not chain onto it: signing would vouch for it."""


@dataclass(frozen=True)
class Anchoring:
    """Where anchors go, who signs them, and how often (from the settings)."""

    sink: AnchorSink
    key_file: Path
    trusted_text: str = ""
    interval: timedelta | None = None
    every_records: int = 0
    # In production the key is provisioned, never generated on first use (settings.py).
    create_key: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Anchoring:
        seconds = settings.audit_anchor_interval_seconds
        return cls(
            AnchorSink(settings.audit_anchor_dir),
            settings.audit_anchor_key_file,
            settings.audit_anchor_trusted_keys,
            timedelta(seconds=seconds) if seconds else None,
            settings.audit_anchor_every_records,
            create_key=settings.environment != "production",
        )

    def signing_key(self) -> AnchorKey:
        """The signing key, created on first use outside production (raise AnchorError when
        it is missing there, or unreadable)."""
        return AnchorKey.load(self.key_file, create=self.create_key)

    def trusted_keys(self) -> dict[str, Ed25519PublicKey]:
        """The configured public keys, and this host's signing key if it has one."""
        keys = parse_public_keys(self.trusted_text)
        if self.key_file.exists():
            key = AnchorKey.load(self.key_file)
            keys[key.key_id] = key.public
        return keys


def anchor_head(
    db: Database,
    anchoring: Anchoring,
    integrations: Integrations,
    now: datetime,
    *,
    force: bool = False,
) -> Anchor | None:
    """Sign the current head and write it to the file sink (fsynced), then queue it for the
    webhooks subscribed to `audit.anchor`. None, writing nothing, when the head has not moved
    since the last anchor (unless `force`). Raise AnchorRefused when the records since the
    last anchor do not chain onto it, AnchorError when the key or the file is unusable."""
    last = anchoring.sink.latest()
    with db.reading() as session:
        head = audit_chain.checkpoint(session)
        if last is not None and last.checkpoint == head and not force:
            return None
        start = last.checkpoint if last is not None else audit_chain.start_of_chain(session)
        problem = audit_chain.verify_segment(session, start, head)
    if problem is not None:
        raise AnchorRefused(problem)
    anchor = anchoring.signing_key().sign(head, now)
    if not anchoring.sink.append(anchor, unless_last=not force):
        return None  # another process anchored this head meanwhile
    if integrations.subscribers(EventType.AUDIT_ANCHOR):
        with db.writing() as session:
            enqueue(
                session,
                integrations,
                EventType.AUDIT_ANCHOR.value,
                {"anchor": anchor.as_dict()},
                request_id=None,
                trace_id=None,
                now=now,
            )
            session.commit()
    log.info("audit_anchored", seq=anchor.seq, hash=anchor.hash, key_id=anchor.key_id)
    return anchor


def is_due(anchoring: Anchoring, head: Checkpoint, last: Anchor | None, elapsed: timedelta) -> bool:
    """Whether the head should be anchored now: it moved, and either `every_records`
    records follow the last anchor or `elapsed` (since the last anchor) reaches the interval."""
    anchored = last.checkpoint if last is not None else GENESIS_POINT
    if head.seq < anchored.seq:
        return True  # behind the last anchor: anchor_head refuses, and that is logged
    if head == anchored:
        return False
    if anchoring.every_records and head.seq - anchored.seq >= anchoring.every_records:
        return True
    return anchoring.interval is not None and elapsed >= anchoring.interval


def verify_anchored(
    session: Session,
    anchoring: Anchoring,
    now: datetime,
    *,
    against: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
) -> Verification:
    """`audit_chain.verify` against the latest anchor (and `against`, if given): broken when
    the chain does not extend it or its signature does not verify; findings when anchoring
    has stopped."""
    try:
        latest = anchoring.sink.latest()
        trusted = anchoring.trusted_keys() if latest is not None else {}
    except AnchorError as exc:
        return Verification(False, 0, None, None, f"the anchor file is unusable: {exc}")
    if latest is not None:
        problem = signature_problem(latest, trusted)
        if problem is not None:
            return Verification(False, 0, None, latest.seq, problem, anchor=str(latest))
    result = audit_chain.verify(
        session,
        against=against,
        anchor=latest.checkpoint if latest else None,
        progress=progress,
    )
    findings = stopped_anchoring(session, anchoring, latest, now) if result.ok else ()
    return replace(result, anchor=str(latest) if latest else None, findings=findings)


def stopped_anchoring(
    session: Session, anchoring: Anchoring, latest: Anchor | None, now: datetime
) -> tuple[str, ...]:
    """What says anchoring has stopped: too many records after the last anchor, or a record
    that has waited longer than LATE_INTERVALS intervals for one."""
    head = audit_chain.checkpoint(session)
    anchored = latest.seq if latest is not None else audit_chain.start_of_chain(session).seq
    since = f"the last anchor (seq {anchored})" if latest else "the start (no anchor yet)"
    findings: list[str] = []
    waiting = head.seq - anchored
    if anchoring.every_records and waiting > LATE_INTERVALS * anchoring.every_records:
        findings.append(
            f"anchoring has stopped: {waiting} records follow {since}, anchors are due every "
            f"{anchoring.every_records}"
        )
    if anchoring.interval is not None and waiting > 0:
        oldest = session.scalar(
            select(AuditRecord.occurred_at).where(AuditRecord.seq == anchored + 1)
        )
        late = LATE_INTERVALS * anchoring.interval + LATE_GRACE
        if oldest is not None and now - oldest > late:
            findings.append(
                f"anchoring has stopped: record seq {anchored + 1} of "
                f"{oldest.isoformat(timespec='seconds')} is not anchored yet, anchors are due "
                f"every {int(anchoring.interval.total_seconds())} s"
            )
    return tuple(findings)


class AnchorLoop(BackgroundLoop):
    """Anchor the head whenever `is_due`, checking every `poll` seconds (one read of the head
    and of the sink's last line). Several processes may run it: each appends only a head
    that moved past the last line of the file."""

    name = "opsgate-anchors"

    def __init__(
        self,
        db: Database,
        anchoring: Anchoring,
        integrations: Integrations,
        clock: Clock,
        *,
        poll: float = 5.0,
    ) -> None:
        self.db = db
        self.anchoring = anchoring
        self.integrations = integrations
        self.clock = clock
        self.poll = poll
        self.started = clock.now()
        super().__init__()

    def work(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll):
            try:
                self.anchor_if_due()
            except Exception as exc:  # a bad round must not end the loop: verify will tell
                log.error("audit_anchor_failed", error=str(exc), exc_info=exc)

    def anchor_if_due(self) -> Anchor | None:
        """One round: anchor the head if it is due (what the loop does every `poll`)."""
        now = self.clock.now()
        last = self.anchoring.sink.latest()
        with self.db.reading() as session:
            head = audit_chain.checkpoint(session)
        elapsed = now - max(last.anchored_at, self.started) if last else now - self.started
        if not is_due(self.anchoring, head, last, elapsed):
            return None
        return anchor_head(self.db, self.anchoring, self.integrations, now)


def start_anchoring(
    db: Database, anchoring: Anchoring, integrations: Integrations, clock: Clock
) -> AnchorLoop | None:
    """Start the loop when either trigger is on; None when both are off."""
    if anchoring.interval is None and not anchoring.every_records:
        return None
    # A quick look at the head every few seconds; sooner when the interval is shorter.
    poll = min(5.0, anchoring.interval.total_seconds() / 2) if anchoring.interval else 5.0
    loop = AnchorLoop(db, anchoring, integrations, clock, poll=poll)
    loop.start()
    return loop
