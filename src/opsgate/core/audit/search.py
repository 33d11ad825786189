"""Searching the audit trail: filters over indexed columns, newest first, cursor pages."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from opsgate.core.errors import InvalidPayload
from opsgate.db.models import AuditRecord

MAX_LIMIT = 500
MAX_SEQ = 2**63 - 1
_CURSOR = re.compile(r"s([1-9][0-9]{0,18})")


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    request_id: str | None = None
    approval_id: str | None = None
    result: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    # Free text, matched case-insensitively anywhere in the reason.
    text: str | None = None

    def as_params(self) -> dict[str, str]:
        """The filters given, as strings (for recording the search itself)."""
        return {
            name: value.isoformat() if isinstance(value, datetime) else str(value)
            for name, value in vars(self).items()
            if value is not None
        }


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditRecord]
    next_cursor: str | None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Return the sequence number a cursor points below; raise InvalidPayload if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raw = ""
    match = _CURSOR.fullmatch(raw)
    if match is None or int(match.group(1)) > MAX_SEQ:
        raise InvalidPayload(
            "The cursor is not one this API issued.",
            errors=[{"loc": ["query", "cursor"], "msg": "unknown cursor"}],
        )
    return int(match.group(1))


def search(session: Session, where: AuditFilter, *, cursor: str | None, limit: int) -> AuditPage:
    """One page of records matching every given filter, newest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidPayload(f"limit must be between 1 and {MAX_LIMIT}.")
    stmt = filtered(where)
    if cursor:
        stmt = stmt.where(AuditRecord.seq < decode_cursor(cursor))
    rows = list(session.scalars(stmt.order_by(AuditRecord.seq.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return AuditPage(items=rows[:limit], next_cursor=next_cursor)


def filtered(where: AuditFilter) -> Select[Any]:
    """A SELECT of the records matching every filter given (unordered)."""
    stmt = select(AuditRecord)
    if where.actor:
        stmt = stmt.where(AuditRecord.actor_id == where.actor)
    if where.action:
        stmt = stmt.where(AuditRecord.action == where.action)
    if where.target:
        stmt = stmt.where(AuditRecord.target == where.target)
    if where.request_id:
        # The original request ID or, for an approved request's run, its execution ID.
        stmt = stmt.where(
            or_(
                AuditRecord.request_id == where.request_id,
                AuditRecord.execution_request_id == where.request_id,
            )
        )
    if where.approval_id:
        stmt = stmt.where(AuditRecord.approval_id == where.approval_id)
    if where.result:
        stmt = stmt.where(AuditRecord.result == where.result)
    if where.since:
        stmt = stmt.where(AuditRecord.occurred_at >= where.since)
    if where.until:
        stmt = stmt.where(AuditRecord.occurred_at < where.until)
    if where.text:
        stmt = stmt.where(
            func.lower(AuditRecord.reason).contains(where.text.lower(), autoescape=True)
        )
    return stmt


def as_dict(row: AuditRecord) -> dict[str, Any]:
    """The public JSON form of an audit record."""
    return {
        "id": row.id,
        "occurred_at": row.occurred_at.isoformat(),
        "request_id": row.request_id,
        "execution_request_id": row.execution_request_id,
        "approval_id": row.approval_id,
        "actor": {"id": row.actor_id, "name": row.actor_name, "roles": row.actor_roles}
        if row.actor_id
        else None,
        "credential_id": row.credential_id,
        "origin": {"ip": row.origin_ip, "user_agent": row.user_agent},
        "action": row.action,
        "target": row.target,
        "parameters": row.parameters,
        "reason": row.reason,
        "result": row.result,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        "before": row.before,
        "after": row.after,
        "outcome": row.outcome,
        "flags": row.flags,
        "policy_version": row.policy_version,
        "trace_id": row.trace_id,
        "client_request_id": row.client_request_id,
        "seq": row.seq,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }
