"""Refused authentications, counted per source address and minute instead of one audit
record each.

An unauthenticated caller can send requests as fast as it likes; writing an audit record for
each (and taking the chain-head lock each time) let 600 of them take 7 s of the whole
deployment's audited writes. Instead every refusal bumps a counter row (source, minute) in the
database, so the count holds across processes:

- the first refusal of a window writes one audit record (what was refused, `refusals: 1`);
- the others only bump the counter; past `limit` in the window they are answered 429;
- once the window has closed, `flush` writes one `auth.refusals` record with the rest of the
  count (`refusals`: how many more, `rate_limited_in_window`). The next refusal from the same
  source flushes its closed windows, each app process flushes every closed window from a
  background loop, and a stopping process flushes everything, its current window included.

Nothing is lost: a window's `audited` column says how many refusals records already account
for, and is raised in the transaction that writes the record. A bump that lands in a window
after it was flushed (a process with a slow clock) is carried by the next flush.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from opsgate.core.actions.gateway import Gateway
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.background import BackgroundLoop
from opsgate.core.errors import ProblemCode
from opsgate.core.identity.actors import Origin
from opsgate.core.request_ids import new_request_id
from opsgate.db.models import AuthRefusalWindow

WINDOW = timedelta(minutes=1)
# Flushed windows are kept this long (for a late bump), then deleted; the trail has them.
KEEP = timedelta(hours=1)
SUMMARY_ACTION = "auth.refusals"
UNKNOWN_SOURCE = "unknown"
FLUSH_BATCH = 200

log = structlog.get_logger("opsgate.auth")


def window_of(now: datetime) -> datetime:
    """The start of the minute `now` falls in."""
    return now.replace(second=0, microsecond=0)


def _bump(session: Session, source: str, window_start: datetime) -> int:
    """Count one refusal in (source, window) and return the window's count so far."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    table = AuthRefusalWindow.__table__
    stmt = (
        dialect.insert(table)
        .values(source=source, window_start=window_start, refusals=1, audited=0)
        .on_conflict_do_update(
            index_elements=["source", "window_start"],
            set_={"refusals": table.c.refusals + 1},
        )
        .returning(table.c.refusals)
    )
    return int(session.execute(stmt).scalar_one())


def _with_outcome(entry: AuditEntry, outcome: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        action=entry.action,
        result=entry.result,
        target=entry.target,
        parameters=entry.parameters,
        error_code=entry.error_code,
        error_message=entry.error_message,
        outcome=outcome,
    )


class Refusals:
    """Refused authentications through `gateway`'s database, clock and audit trail, with at
    most `limit` per source and window answered as plain refusals."""

    def __init__(self, gateway: Gateway, limit: int) -> None:
        self.gateway = gateway
        self.limit = limit

    def refuse(self, entry: AuditEntry, origin: Origin) -> bool:
        """Count a refused authentication from `origin`'s address; audit it when it is the
        first of its window (flushing the source's earlier windows). Return True when the
        source is past the limit in this window (answer 429)."""
        source = (origin.ip or UNKNOWN_SOURCE)[:64]
        with self.gateway.db.writing() as session:
            now = self.gateway.clock.now()
            start = window_of(now)
            count = _bump(session, source, start)
            audit_id = None
            if count == 1:
                self._flush_windows(session, now, before=start, source=source)
                outcome = {"refusals": 1, "window_start": start.isoformat()}
                row = self.gateway.write_audit(
                    session, _with_outcome(entry, outcome), None, origin, now
                )
                audit_id = row.id
                session.execute(
                    update(AuthRefusalWindow)
                    .where(
                        AuthRefusalWindow.source == source,
                        AuthRefusalWindow.window_start == start,
                    )
                    .values(audited=AuthRefusalWindow.audited + 1)
                )
            session.commit()
        # Every refusal is still a log line; only the first of a window has its own record.
        log.info(
            "action",
            actor=None,
            action=entry.action[:128],
            result=entry.result.value,
            error_code=entry.error_code,
            audit_id=audit_id,
            refusals_in_window=count,
            rate_limited=count > self.limit,
        )
        return count > self.limit

    def flush(self, *, everything: bool = False) -> int:
        """Write one `auth.refusals` record for each closed window (each window, with
        `everything`) whose refusals no record accounts for yet; return how many were
        written. Safe from several processes at once (locked rows are skipped; a window's
        `audited` is raised in its record's own transaction)."""
        with self.gateway.db.writing() as session:
            now = self.gateway.clock.now()
            before = now + WINDOW if everything else window_of(now)
            written = self._flush_windows(session, now, before=before)
            session.execute(
                delete(AuthRefusalWindow).where(
                    AuthRefusalWindow.window_start < now - KEEP,
                    AuthRefusalWindow.refusals == AuthRefusalWindow.audited,
                )
            )
            session.commit()
        return written

    def _flush_windows(
        self, session: Session, now: datetime, *, before: datetime, source: str | None = None
    ) -> int:
        stmt = (
            select(AuthRefusalWindow)
            .where(
                AuthRefusalWindow.window_start < before,
                AuthRefusalWindow.refusals > AuthRefusalWindow.audited,
            )
            .order_by(AuthRefusalWindow.window_start, AuthRefusalWindow.source)
            .limit(FLUSH_BATCH)
            .with_for_update(skip_locked=True)
        )
        if source is not None:
            stmt = stmt.where(AuthRefusalWindow.source == source)
        windows = list(session.scalars(stmt))
        for window in windows:
            self.gateway.write_audit(
                session,
                AuditEntry(
                    action=SUMMARY_ACTION,
                    result=AuditResult.DENIED,
                    error_code=ProblemCode.UNAUTHENTICATED.value,
                    error_message="Refused authentications from this address in this minute.",
                    parameters={
                        "source": window.source,
                        "window_start": window.window_start.isoformat(),
                        "window_seconds": int(WINDOW.total_seconds()),
                    },
                    outcome={
                        "refusals": window.refusals - window.audited,
                        "rate_limited_in_window": max(0, window.refusals - self.limit),
                    },
                ),
                None,
                Origin(request_id=new_request_id(), ip=window.source),
                now,
            )
            window.audited = window.refusals
        return len(windows)


class RefusalFlushLoop(BackgroundLoop):
    """Flushes closed windows every `interval` seconds, and everything when it stops."""

    name = "opsgate-auth-refusals"

    def __init__(self, refusals: Refusals, interval: float = 30.0) -> None:
        super().__init__()
        self.refusals = refusals
        self.interval = interval

    def work(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.refusals.flush()
            except Exception:  # a failed flush is retried on the next tick; nothing is lost
                log.exception("auth_refusals_flush_failed")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        try:
            self.refusals.flush(everything=True)
        except Exception:  # the counts stay in the table; another process or restart flushes
            log.exception("auth_refusals_flush_failed")
