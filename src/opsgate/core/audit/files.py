"""The audit trail leaving the database: exports (JSON lines or CSV) and archives.

Both stream in sequence order in batches, in constant memory. An archive is an export of a
verified prefix of the chain, written with its boundary hashes and its own SHA-256, after
which, and only then, the prefix is removed in one transaction that also records the archive
in the chain itself.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from opsgate.core.audit.chain import start_of_chain, verify
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.audit.search import AuditFilter, as_dict, filtered
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.ids import new_id
from opsgate.db.engine import Database
from opsgate.db.models import AuditArchive, AuditArchivePermit, AuditRecord

CSV_COLUMNS = (
    "seq", "id", "occurred_at", "request_id", "execution_request_id", "approval_id",
    "actor_id", "actor_name", "credential_id", "origin_ip", "action", "target", "result",
    "error_code", "error_message", "reason", "parameters", "before", "after", "outcome",
    "flags", "policy_version", "prev_hash", "hash",
)  # fmt: skip


def iter_records(
    session: Session, where: AuditFilter, *, batch: int = 1000, through_seq: int | None = None
) -> Iterator[AuditRecord]:
    """Matching records in sequence order, fetched in batches (constant memory)."""
    last = 0
    while True:
        stmt = filtered(where).where(AuditRecord.seq > last)
        if through_seq is not None:
            stmt = stmt.where(AuditRecord.seq <= through_seq)
        rows = list(session.scalars(stmt.order_by(AuditRecord.seq).limit(batch)))
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1].seq
        session.expunge_all()


def _csv_row(row: AuditRecord) -> list[str]:
    data = as_dict(row)
    flat = {
        **data,
        "actor_id": row.actor_id,
        "actor_name": row.actor_name,
        "origin_ip": row.origin_ip,
        "error_code": row.error_code,
        "error_message": row.error_message,
    }
    out = []
    for column in CSV_COLUMNS:
        value = flat.get(column)
        out.append(
            json.dumps(value, sort_keys=True)
            if isinstance(value, dict | list)
            else ""
            if value is None
            else str(value)
        )
    return out


def export(
    session: Session,
    where: AuditFilter,
    out: IO[str],
    *,
    fmt: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write matching records to `out` as `jsonl` or `csv`; return how many."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    count = 0
    for row in iter_records(session, where):
        if writer is not None:
            writer.writerow(_csv_row(row))
        else:
            out.write(json.dumps(as_dict(row), sort_keys=True) + "\n")
        count += 1
        if progress is not None:
            progress(1)
    return count


def csv_text(rows: list[AuditRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(_csv_row(row))
    return buffer.getvalue()


def raw_record(row: AuditRecord) -> dict[str, Any]:
    """Every hashed column as stored, plus the hash: what an archive keeps, so that the
    archive can be verified on its own (`verify_archive`)."""
    from opsgate.core.audit.chain import HASHED_FIELDS

    raw: dict[str, Any] = {name: getattr(row, name) for name in HASHED_FIELDS}
    raw["occurred_at"] = row.occurred_at.isoformat()
    raw["hash"] = row.hash
    return raw


@dataclass(frozen=True)
class ArchiveResult:
    archive_id: str
    first_seq: int
    through_seq: int
    through_hash: str
    records: int
    file_sha256: str
    audit_id: str


class ArchiveRefused(Exception):
    """The chain does not verify, or nothing is old enough to archive."""


def archive(
    db: Database,
    *,
    before: datetime,
    directory: Path,
    actor: Actor,
    origin: Origin,
    policy_version: str | None,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> ArchiveResult:
    """Export the oldest records (those before `before`) to a file, then remove them.

    Only a verified chain is archived, and only a contiguous prefix of it, so the remaining
    chain still starts where the archive ends. Raises ArchiveRefused.
    """
    with db.reading() as session:
        checked = verify(session)
        if not checked.ok:
            raise ArchiveRefused(
                f"the chain does not verify: {checked.problem} (record {checked.first_bad_seq})"
            )
        start = start_of_chain(session)
        first_young = session.scalar(
            select(func.min(AuditRecord.seq)).where(AuditRecord.occurred_at >= before)
        )
        last_old = session.scalar(
            select(func.max(AuditRecord.seq)).where(
                AuditRecord.occurred_at < before,
                *([AuditRecord.seq < first_young] if first_young is not None else []),
            )
        )
        if last_old is None:
            raise ArchiveRefused(f"no records before {before.isoformat()} to archive")
        boundary = session.get(AuditRecord, last_old)
        assert boundary is not None
        through_hash = boundary.hash
        path = directory / f"opsgate-audit-{start.seq + 1}-{last_old}.jsonl"
        digest = hashlib.sha256()
        count = 0
        with path.open("w", encoding="utf-8") as handle:
            header = {
                "opsgate_audit_archive": 1,
                "first_seq": start.seq + 1,
                "through_seq": last_old,
                "start_prev_hash": start.hash,
                "through_hash": through_hash,
            }
            line = json.dumps(header, sort_keys=True) + "\n"
            handle.write(line)
            digest.update(line.encode())
            for row in iter_records(session, AuditFilter(), through_seq=last_old):
                line = json.dumps(raw_record(row), sort_keys=True) + "\n"
                handle.write(line)
                digest.update(line.encode())
                count += 1
                if progress is not None:
                    progress(1)
    with db.writing() as session:
        permit = AuditArchivePermit(id=new_id("prm"))
        session.add(permit)
        session.flush()
        session.execute(delete(AuditRecord).where(AuditRecord.seq <= last_old))
        session.delete(permit)
        archive_row = AuditArchive(
            id=new_id("arc"),
            first_seq=start.seq + 1,
            through_seq=last_old,
            through_hash=through_hash,
            records=count,
            file_name=path.name,
            file_sha256=digest.hexdigest(),
            archived_at=now,
            archived_by=actor.name,
        )
        session.add(archive_row)
        details: dict[str, Any] = {
            "archive_id": archive_row.id,
            "first_seq": start.seq + 1,
            "through_seq": last_old,
            "through_hash": through_hash,
            "records": count,
            "file": path.name,
            "file_sha256": archive_row.file_sha256,
            "before": before.isoformat(),
        }
        row = record(
            session,
            AuditEntry(action="audit.archive", result=AuditResult.SUCCEEDED, outcome=details),
            actor=actor,
            origin=origin,
            policy_version=policy_version,
            now=now,
        )
        session.commit()
        return ArchiveResult(
            archive_id=archive_row.id,
            first_seq=start.seq + 1,
            through_seq=last_old,
            through_hash=through_hash,
            records=count,
            file_sha256=archive_row.file_sha256,
            audit_id=row.id,
        )


@dataclass(frozen=True)
class ArchiveCheck:
    ok: bool
    records: int
    problem: str | None = None
    first_seq: int | None = None
    through_seq: int | None = None
    through_hash: str | None = None


def verify_archive(path: Path) -> ArchiveCheck:
    """Check an archive file on its own: its records chain from the header's start hash to
    its through hash, every record's hash matches its content, and nothing is missing."""
    from types import SimpleNamespace

    from opsgate.core.audit.chain import HASHED_FIELDS, record_hash

    with path.open(encoding="utf-8") as handle:
        try:
            header = json.loads(handle.readline())
            prev, expected_seq = header["start_prev_hash"], header["first_seq"]
            through_seq, through_hash = header["through_seq"], header["through_hash"]
        except (ValueError, KeyError, TypeError):
            return ArchiveCheck(False, 0, "the file has no archive header")
        count = 0
        for line in handle:
            data = json.loads(line)
            count += 1
            fields = {name: data.get(name) for name in HASHED_FIELDS}
            fields["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
            row = SimpleNamespace(**fields)
            if row.seq != expected_seq or row.prev_hash != prev:
                return ArchiveCheck(False, count, f"the chain breaks at seq {row.seq}")
            if record_hash(row) != data["hash"]:  # type: ignore[arg-type]
                return ArchiveCheck(False, count, f"record {row.seq} was altered")
            prev, expected_seq = data["hash"], expected_seq + 1
    if expected_seq - 1 != through_seq or prev != through_hash:
        return ArchiveCheck(False, count, "the file ends before the header's through record")
    return ArchiveCheck(True, count, None, header["first_seq"], through_seq, through_hash)
