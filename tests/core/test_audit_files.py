"""The audit trail leaving the database, on SQLite and PostgreSQL: exports (JSON lines, CSV)
with filters, and archives of a verified prefix of the chain."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from opsgate.core.audit.chain import GENESIS, Checkpoint, record_hash, start_of_chain, verify
from opsgate.core.audit.files import (
    CSV_COLUMNS,
    ArchiveRefused,
    ArchiveResult,
    archive,
    export,
    raw_record,
)
from opsgate.core.audit.search import AuditFilter, as_dict
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.models import AuditArchive, AuditArchivePermit, AuditRecord
from opsgate.web.services import Services
from tests.conftest import World
from tests.core.test_audit_chain import actor, make_trail, records, tampering

ARCHIVIST = Actor(id="cli:archivist", name="archivist (cli)", roles=frozenset())


def add_notes(services: Services, world: World, who: str, tag: str, n: int) -> None:
    for i in range(n):
        services.gateway.submit(
            actor(world, who),
            "customer.add_note",
            {
                "target": f"customer:{world.customer(i)}",
                "payload": {"text": f"{tag} {i}"},
                "reason": f"{tag} reason {i}",
            },
            Origin(f"{tag}-{i}"),
        )


def plain(value: Any) -> Any:
    """`value` as the JSON it is written as."""
    return json.loads(json.dumps(value, sort_keys=True))


# --- export ------------------------------------------------------------------------------------


@pytest.fixture
def timed_trail(services: Services, world: World, clock: FrozenClock) -> dict[str, datetime]:
    """The standard trail at t0, two notes by rita an hour later, two by bob an hour after."""
    t0 = clock.now()
    make_trail(services, world)
    clock.advance(timedelta(hours=1))
    add_notes(services, world, "rita", "later", 2)
    clock.advance(timedelta(hours=1))
    add_notes(services, world, "bob", "latest", 2)
    return {"t0": t0, "t1": t0 + timedelta(hours=1), "t2": t0 + timedelta(hours=2)}


Case = tuple[Callable[[World, dict[str, datetime]], AuditFilter], Callable[..., bool]]

CASES: dict[str, Case] = {
    "everything": (lambda w, t: AuditFilter(), lambda r, w, t: True),
    "actor": (
        lambda w, t: AuditFilter(actor=w.user_ids["alice"]),
        lambda r, w, t: r.actor_id == w.user_ids["alice"],
    ),
    "action": (
        lambda w, t: AuditFilter(action="customer.add_note"),
        lambda r, w, t: r.action == "customer.add_note",
    ),
    "result": (lambda w, t: AuditFilter(result="denied"), lambda r, w, t: r.result == "denied"),
    "request_id": (
        lambda w, t: AuditFilter(request_id="trail-unblock"),
        lambda r, w, t: r.request_id == "trail-unblock",
    ),
    "text": (
        lambda w, t: AuditFilter(text="REASON"),
        lambda r, w, t: "reason" in (r.reason or "").lower(),
    ),
    "window": (
        lambda w, t: AuditFilter(since=t["t1"], until=t["t2"]),
        lambda r, w, t: t["t1"] <= r.occurred_at < t["t2"],
    ),
    "combined": (
        lambda w, t: AuditFilter(action="customer.add_note", since=t["t1"]),
        lambda r, w, t: r.action == "customer.add_note" and r.occurred_at >= t["t1"],
    ),
}


def expected_rows(db: Database, world: World, times: dict[str, datetime], case: str) -> list[Any]:
    matches = CASES[case][1]
    rows = [row for row in records(db) if matches(row, world, times)]
    assert rows, f"the {case} case must match something"
    return rows


@pytest.mark.parametrize("case", list(CASES))
def test_jsonl_export_is_exactly_the_matching_records_in_seq_order(
    db: Database, world: World, timed_trail: dict[str, datetime], case: str
) -> None:
    expected = expected_rows(db, world, timed_trail, case)
    out = io.StringIO()
    with db.reading() as session:
        written = export(session, CASES[case][0](world, timed_trail), out, fmt="jsonl")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == len(lines) == len(expected)
    assert lines == [plain(as_dict(row)) for row in expected]
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)


@pytest.mark.parametrize("case", ["everything", "actor", "request_id", "window"])
def test_csv_export_is_exactly_the_matching_records_in_seq_order(
    db: Database, world: World, timed_trail: dict[str, datetime], case: str
) -> None:
    expected = expected_rows(db, world, timed_trail, case)
    out = io.StringIO()
    with db.reading() as session:
        written = export(session, CASES[case][0](world, timed_trail), out, fmt="csv")
    header, *rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(header) == CSV_COLUMNS
    assert written == len(rows) == len(expected)
    by_column = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows]
    assert [r["id"] for r in by_column] == [row.id for row in expected]
    assert [int(r["seq"]) for r in by_column] == [row.seq for row in expected]
    for line, row in zip(by_column, expected, strict=True):
        assert line["hash"] == row.hash
        assert line["actor_id"] == (row.actor_id or "")
        assert line["reason"] == (row.reason or "")
        assert json.loads(line["parameters"] or "null") == row.parameters
        assert json.loads(line["outcome"] or "null") == row.outcome
        assert datetime.fromisoformat(line["occurred_at"]) == row.occurred_at


def test_an_export_matching_nothing_writes_only_the_csv_header(
    db: Database, timed_trail: dict[str, datetime]
) -> None:
    out = io.StringIO()
    with db.reading() as session:
        assert export(session, AuditFilter(action="no.such"), out, fmt="csv") == 0
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [list(CSV_COLUMNS)]


# --- archive -----------------------------------------------------------------------------------


def run_archive(
    services: Services, directory: Path, before: datetime, request_id: str = "archive-1"
) -> ArchiveResult:
    return archive(
        services.db,
        before=before,
        directory=directory,
        actor=ARCHIVIST,
        origin=Origin(request_id, None, "opsgate-cli"),
        policy_version=services.policy.version,
        now=services.clock.now(),
    )


def file_records_verify(header: dict[str, Any], lines: list[dict[str, Any]]) -> bool:
    """Recompute the chain of an archive file from its own lines (raw columns)."""
    prev = header["start_prev_hash"]
    for line in lines:
        fields = line | {"occurred_at": datetime.fromisoformat(line["occurred_at"])}
        if line["prev_hash"] != prev or record_hash(SimpleNamespace(**fields)) != line["hash"]:  # type: ignore[arg-type]
            return False
        prev = line["hash"]
    return prev == header["through_hash"]


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "archives"
    directory.mkdir()
    return directory


def archive_count(db: Database) -> tuple[int, int]:
    with db.reading() as session:
        return (
            int(session.scalar(select(func.count()).select_from(AuditArchive)) or 0),
            int(session.scalar(select(func.count()).select_from(AuditArchivePermit)) or 0),
        )


def test_archive_moves_the_old_prefix_to_a_file_and_the_chain_continues(
    services: Services, db: Database, world: World, clock: FrozenClock, archive_dir: Path
) -> None:
    t0 = clock.now()
    make_trail(services, world)
    old = records(db)
    clock.advance(timedelta(days=2))
    add_notes(services, world, "bob", "young", 2)
    young = records(db)[len(old) :]
    checkpoint_before = Checkpoint(young[-1].seq, young[-1].hash)

    done = run_archive(services, archive_dir, before=t0 + timedelta(days=1))

    assert (done.first_seq, done.through_seq, done.records) == (1, len(old), len(old))
    assert done.through_hash == old[-1].hash
    [path] = list(archive_dir.iterdir())
    assert path.name == f"opsgate-audit-1-{len(old)}.jsonl"
    assert done.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    header, *lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert header == {
        "opsgate_audit_archive": 1,
        "first_seq": 1,
        "through_seq": len(old),
        "start_prev_hash": GENESIS,
        "through_hash": old[-1].hash,
    }
    assert lines == [plain(raw_record(row)) for row in old]
    assert file_records_verify(header, lines)

    remaining = records(db)
    assert [row.id for row in remaining[:-1]] == [row.id for row in young]
    [note] = [remaining[-1]]
    assert (note.id, note.action, note.result, note.seq) == (
        done.audit_id,
        "audit.archive",
        "succeeded",
        young[-1].seq + 1,
    )
    assert (note.actor_id, note.request_id) == (ARCHIVIST.id, "archive-1")
    assert note.outcome is not None
    assert {k: note.outcome[k] for k in ("archive_id", "through_seq", "file_sha256")} == {
        "archive_id": done.archive_id,
        "through_seq": len(old),
        "file_sha256": done.file_sha256,
    }
    with db.reading() as session:
        stored = session.get(AuditArchive, done.archive_id)
        assert stored is not None
        assert (stored.first_seq, stored.through_seq, stored.records) == (1, len(old), len(old))
        assert (stored.file_name, stored.file_sha256) == (path.name, done.file_sha256)
        assert start_of_chain(session) == Checkpoint(len(old), old[-1].hash)
        assert verify(session).ok
        assert verify(session).entries == len(young) + 1
        assert verify(session, against=checkpoint_before).ok
        in_archive = verify(session, against=Checkpoint(2, old[1].hash))
        assert not in_archive.ok
        assert "archive" in (in_archive.problem or "")
    assert archive_count(db) == (1, 0)

    # Appends go on from the head; a second archive starts where the first one ended.
    add_notes(services, world, "alice", "after", 1)
    clock.advance(timedelta(days=2))
    add_notes(services, world, "alice", "much-later", 1)
    second = run_archive(services, archive_dir, before=clock.now(), request_id="archive-2")
    assert second.first_seq == len(old) + 1
    second_file = archive_dir / f"opsgate-audit-{second.first_seq}-{second.through_seq}.jsonl"
    header2 = json.loads(second_file.read_text("utf-8").splitlines()[0])
    assert header2["start_prev_hash"] == old[-1].hash
    with db.reading() as session:
        assert verify(session).ok
        assert start_of_chain(session) == Checkpoint(second.through_seq, second.through_hash)


def test_archive_takes_only_a_contiguous_prefix(
    services: Services, db: Database, world: World, clock: FrozenClock, archive_dir: Path
) -> None:
    """A record stamped early but written after a young one stays: the chain must still
    start where the archive ends."""
    t0 = clock.now()
    add_notes(services, world, "alice", "old", 3)
    clock.advance(timedelta(days=2))
    add_notes(services, world, "alice", "young", 1)
    clock.advance(timedelta(days=-2))  # a process with a slow clock
    add_notes(services, world, "alice", "late-old", 1)
    before = records(db)

    done = run_archive(services, archive_dir, before=t0 + timedelta(days=1))

    assert (done.first_seq, done.through_seq) == (1, 3)
    after = records(db)
    assert [row.id for row in after[:-1]] == [row.id for row in before[3:]]
    with db.reading() as session:
        assert verify(session).ok


def test_archiving_a_broken_chain_is_refused_and_deletes_nothing(
    services: Services,
    db: Database,
    world: World,
    clock: FrozenClock,
    archive_dir: Path,
    owner_db: Database,
) -> None:
    t0 = clock.now()
    make_trail(services, world)
    clock.advance(timedelta(days=2))
    original = records(db)
    with tampering(owner_db) as session:
        row = session.get(AuditRecord, 4)
        assert row is not None
        row.reason = "rewritten"

    with pytest.raises(ArchiveRefused, match=r"does not verify.*record 4"):
        run_archive(services, archive_dir, before=t0 + timedelta(days=1))

    assert [row.id for row in records(db)] == [row.id for row in original]
    assert list(archive_dir.iterdir()) == []
    assert archive_count(db) == (0, 0)


def test_archiving_with_nothing_old_enough_is_refused(
    services: Services, db: Database, world: World, clock: FrozenClock, archive_dir: Path
) -> None:
    t0 = clock.now()
    make_trail(services, world)
    original = records(db)

    with pytest.raises(ArchiveRefused, match="no records before"):
        run_archive(services, archive_dir, before=t0)

    assert [row.id for row in records(db)] == [row.id for row in original]
    assert list(archive_dir.iterdir()) == []
    assert archive_count(db) == (0, 0)


def test_archiving_an_empty_chain_is_refused(
    services: Services, db: Database, clock: FrozenClock, archive_dir: Path
) -> None:
    with pytest.raises(ArchiveRefused, match="no records before"):
        run_archive(services, archive_dir, before=clock.now() + timedelta(days=1))
    assert records(db) == []
    assert list(archive_dir.iterdir()) == []
