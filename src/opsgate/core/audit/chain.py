"""The audit trail's hash chain (tamper evidence).

Each record carries `prev_hash` and `hash = SHA-256(canonical record + prev_hash)`, where the
canonical form is RFC 8785-style JSON (sorted keys, no insignificant whitespace, UTF-8, times
as ISO 8601 UTC with microseconds). Appends lock the one-row chain head in the appending
transaction, so two transactions can never both extend the same record, across processes;
they read the head instead of scanning the table.

Verification walks the chain in sequence order and names the first record that does not fit:
an edited field, a deleted or inserted row, a swap, or a truncated tail (the head no longer
matches the last record). A checkpoint (`SEQ:HASH`) kept outside the database proves even a
complete rewrite by someone who can recompute hashes; core/audit/anchors.py keeps signed ones
automatically, and `verify` checks the latest (`anchor=`) beside any the operator gives.

A record planted beyond the head (seq head + 1) would make every later append collide with
it: the append then refuses with RecordBeyondHead, naming it, instead of a unique-key error.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from opsgate.core import metrics
from opsgate.core.canonical import canonical_json
from opsgate.core.errors import AuditBlocked
from opsgate.db.models import AuditArchive, AuditChainHead, AuditRecord

GENESIS = "0" * 64
HEAD_ID = 1
# The fields a record's hash covers: every column but the hash itself.
HASHED_FIELDS = (
    "seq", "id", "occurred_at", "request_id", "execution_request_id", "approval_id",
    "actor_id", "actor_name", "actor_roles", "credential_id", "origin_ip", "user_agent",
    "action", "target", "parameters", "reason", "result", "error_code", "error_message",
    "before", "after", "outcome", "flags", "policy_version", "prev_hash", "trace_id",
    "client_request_id",
)  # fmt: skip
# Fields added after records existed: hashed only when set, so older records keep their hash
# (and setting or clearing one later still changes the hash).
_OPTIONAL_FIELDS = frozenset({"trace_id", "client_request_id"})


def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def hash_values(values: Sequence[Any]) -> str:
    """The hash of a record given its HASHED_FIELDS values, in that order."""
    fields = {
        name: _canonical_value(value)
        for name, value in zip(HASHED_FIELDS, values, strict=True)
        if value is not None or name not in _OPTIONAL_FIELDS
    }
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def record_hash(row: AuditRecord) -> str:
    """The hash a record must carry, from its own fields and its `prev_hash`."""
    return hash_values([getattr(row, name) for name in HASHED_FIELDS])


_HEAD = cast(Table, AuditChainHead.__table__)
_RECORDS = cast(Table, AuditRecord.__table__)
_COLUMNS = tuple(column.key for column in _RECORDS.columns)
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


# An insert that yields to an existing row instead of failing (which would abort the
# transaction on PostgreSQL): a collision means a record was planted beyond the head.
_INSERTS = {
    "postgresql": postgresql.insert(_RECORDS).on_conflict_do_nothing().returning(_RECORDS.c.seq),
    "sqlite": sqlite.insert(_RECORDS).on_conflict_do_nothing().returning(_RECORDS.c.seq),
}


class RecordBeyondHead(AuditBlocked):
    """A record sits where the next append must go: nothing can be recorded until an
    operator has looked (the chain was written to outside opsgate). A caller is answered
    503 `audit_blocked` with this message."""

    def __init__(self, record_id: str, seq: int, head_seq: int) -> None:
        self.record_id, self.seq, self.head_seq = record_id, seq, head_seq
        super().__init__(
            f"{beyond_head_message(record_id, seq, head_seq)}. Nothing can be recorded until "
            "it is resolved: `opsgate audit verify` reports on the chain"
        )


def beyond_head_message(record_id: str, seq: int, head_seq: int) -> str:
    """The one wording for a planted record, shared by verify and every refusal."""
    return (
        f"record {record_id} (seq {seq}) lies beyond the chain head (seq {head_seq}): "
        "no append through opsgate wrote it"
    )


def append(session: Session, row: AuditRecord) -> AuditRecord:
    """Chain `row` after the head, in the caller's transaction (which then holds the head's
    lock until it commits or rolls back). `row` is written with plain SQL and stays
    detached: three statements, none of which reads the records table. Raises
    RecordBeyondHead when a record already holds the next seq."""
    started = time.perf_counter()
    seq, prev = session.execute(
        select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == HEAD_ID).with_for_update()
    ).one()
    row.seq = seq + 1
    row.prev_hash = prev
    row.hash = record_hash(row)
    inserted = session.execute(
        _INSERTS[session.get_bind().dialect.name], {key: getattr(row, key) for key in _COLUMNS}
    ).scalar()
    if inserted is None:
        planted = session.scalar(select(_RECORDS.c.id).where(_RECORDS.c.seq == row.seq))
        raise RecordBeyondHead(planted or "(unknown)", row.seq, seq)
    session.execute(update(_HEAD).where(_HEAD.c.id == HEAD_ID).values(seq=row.seq, hash=row.hash))
    metrics.observe_audit_append(time.perf_counter() - started)
    return row


def beyond_head(session: Session) -> RecordBeyondHead | None:
    """The refusal every append would meet now, if a record lies beyond the head (what
    `serve` and the CLI check before they start writing)."""
    found = _unaccounted_records(session)
    if found is None:
        return None
    head = session.get(AuditChainHead, HEAD_ID)
    return RecordBeyondHead(found.id, found.seq, head.seq if head else 0)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse `SEQ:HASH`; raise ValueError for anything else."""
        seq, _, digest = text.strip().partition(":")
        if (
            not seq.isdigit()
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise ValueError("a checkpoint looks like 1234:<64 hex characters>")
        return cls(int(seq), digest)


def checkpoint(session: Session) -> Checkpoint:
    """The current head, for operators to keep outside the database."""
    head = session.get(AuditChainHead, HEAD_ID)
    assert head is not None, "the audit chain head is missing (migrations not applied?)"
    return Checkpoint(head.seq, head.hash)


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad_id: str | None = None
    first_bad_seq: int | None = None
    problem: str | None = None
    # The signed anchor the chain was checked against (core/audit/anchors.py), if any.
    anchor: str | None = None
    # What is wrong without breaking the chain, e.g. anchoring that stopped.
    findings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_id": self.first_bad_id,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "anchor": self.anchor,
            "findings": list(self.findings),
        }


_WALK = select(*(_RECORDS.c[name] for name in HASHED_FIELDS), _RECORDS.c.hash)
_HASHED = len(HASHED_FIELDS)


def _rows(session: Session, batch: int, *, through: int, after: int = -1) -> Iterator[Any]:
    """Records as plain rows (hashed columns in order, then the hash), in batches: the walk
    builds no ORM objects and keeps constant memory, however long the chain."""
    last = after
    while True:
        rows = list(
            session.execute(
                _WALK.where(_RECORDS.c.seq > last, _RECORDS.c.seq <= through)
                .order_by(_RECORDS.c.seq)
                .limit(batch)
            )
        )
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].seq


def start_of_chain(session: Session) -> Checkpoint:
    """Where the records in the table start: genesis, or the end of the last archive."""
    archived = _newest_archive(session)
    if archived is None:
        return Checkpoint(0, GENESIS)
    return Checkpoint(archived.through_seq, archived.through_hash)


def verify(
    session: Session,
    *,
    against: Checkpoint | None = None,
    anchor: Checkpoint | None = None,
    progress: Callable[[int], None] | None = None,
    batch: int = 2000,
) -> Verification:
    """Walk the chain up to the head read at the start (appends committed meanwhile are
    left for the next run); report the first record that breaks it, if any. The chain must
    extend `against` (an operator's checkpoint) and `anchor` (the latest signed anchor)."""
    head = session.get(AuditChainHead, HEAD_ID)
    if head is None:
        return Verification(False, 0, None, None, "the chain head is missing")
    head_seq, head_hash = head.seq, head.hash
    archive = _newest_archive(session)
    expected = start_of_chain(session)
    prev_seq, prev_hash = expected.seq, expected.hash
    count = 0
    points = {name: point for name, point in (("checkpoint", against), ("anchor", anchor)) if point}
    unseen = {name for name, point in points.items() if point != expected}
    archive_recorded = archive is None
    for name, point in points.items():
        if point.seq < expected.seq:
            return Verification(
                False,
                0,
                None,
                point.seq,
                f"the {name} lies in an archived segment: verify the archive file",
            )
    for row in _rows(session, batch, through=head_seq):
        count += 1
        problem = _break(row, prev_seq, prev_hash)
        for name in sorted(unseen):
            if problem is None and row.seq == points[name].seq:
                if row.hash != points[name].hash:
                    problem = f"the chain no longer extends the {name}"
                unseen.discard(name)
        if problem is not None:
            return Verification(False, count, row.id, row.seq, problem)
        if archive is not None and _records_archive(row, archive):
            archive_recorded = True
        prev_seq, prev_hash = row.seq, row.hash
        if progress is not None:
            progress(1)
    if (head_seq, head_hash) != (prev_seq, prev_hash):
        return Verification(
            False,
            count,
            None,
            prev_seq + 1,
            f"records after {prev_seq} are missing (the head is at {head_seq})",
        )
    beyond = _unaccounted_records(session)
    if beyond is not None:
        return Verification(
            False,
            count,
            beyond.id,
            beyond.seq,
            beyond_head_message(beyond.id, beyond.seq, head_seq),
        )
    if not archive_recorded:
        return Verification(
            False,
            count,
            None,
            expected.seq,
            "records up to the archive boundary were removed without an audit.archive record",
        )
    for name in sorted(unseen):
        return Verification(
            False,
            count,
            None,
            points[name].seq,
            f"the {name}'s record is not in the chain: it was cut or rewritten shorter",
        )
    return Verification(True, count)


def verify_segment(session: Session, start: Checkpoint, head: Checkpoint) -> str | None:
    """Check only the records after `start` up to `head` (what an anchor adds to the one
    before it): None when they chain from `start` to `head`, else what is wrong."""
    if start.seq > head.seq:
        return f"the head (seq {head.seq}) is behind the last anchor (seq {start.seq})"
    if start.seq > 0:
        at = session.scalar(select(_RECORDS.c.hash).where(_RECORDS.c.seq == start.seq))
        if at is not None and at != start.hash:
            return f"the chain no longer extends the anchor at seq {start.seq}"
    prev_seq, prev_hash = start.seq, start.hash
    for row in _rows(session, 2000, through=head.seq, after=start.seq):
        problem = _break(row, prev_seq, prev_hash)
        if problem is not None:
            return f"record {row.id} (seq {row.seq}): {problem}"
        prev_seq, prev_hash = row.seq, row.hash
    if (prev_seq, prev_hash) != (head.seq, head.hash):
        return f"records after {prev_seq} are missing (the head is at {head.seq})"
    return None


def _unaccounted_records(session: Session) -> AuditRecord | None:
    """A record past the current head: every honest append moves the head in the same
    transaction, so reading the highest seq first and the head second cannot race one."""
    highest = session.scalar(select(func.max(AuditRecord.seq)))
    head = session.get(AuditChainHead, HEAD_ID, populate_existing=True)
    if highest is None or head is None or highest <= head.seq:
        return None
    return session.scalars(
        select(AuditRecord).where(AuditRecord.seq > head.seq).order_by(AuditRecord.seq).limit(1)
    ).first()


def _break(row: Any, prev_seq: int, prev_hash: str) -> str | None:
    if row.seq != prev_seq + 1:
        return f"sequence jumps from {prev_seq} to {row.seq}: records are missing or were inserted"
    if row.prev_hash != prev_hash:
        return "prev_hash does not match the previous record"
    if hash_values(row[:_HASHED]) != row.hash:
        return "the record's content was altered"
    return None


def _newest_archive(session: Session) -> AuditArchive | None:
    return session.scalars(
        select(AuditArchive).order_by(AuditArchive.through_seq.desc()).limit(1)
    ).first()


def _records_archive(row: Any, archive: AuditArchive) -> bool:
    """True when `row` is the chained record of `archive` (what makes the boundary honest)."""
    if row.action != "audit.archive" or not row.outcome:
        return False
    outcome = row.outcome
    return bool(
        outcome.get("archive_id") == archive.id
        and outcome.get("through_seq") == archive.through_seq
        and outcome.get("through_hash") == archive.through_hash
        and outcome.get("file_sha256") == archive.file_sha256
    )


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)
