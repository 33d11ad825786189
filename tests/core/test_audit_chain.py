"""The audit trail's hash chain (DESIGN.md invariant 7) on SQLite and PostgreSQL: real actions
chain correctly, and every way an attacker with database access can alter the table is
detected and names the right record."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from opsgate.core.approvals.gate import Decision
from opsgate.core.audit.chain import (
    GENESIS,
    HASHED_FIELDS,
    HEAD_ID,
    Checkpoint,
    Verification,
    checkpoint,
    record_hash,
    verify,
)
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import Forbidden, InvalidPayload
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.ids import new_id
from opsgate.db import append_only
from opsgate.db.engine import Database
from opsgate.db.models import AuditArchive, AuditArchivePermit, AuditChainHead, AuditRecord
from opsgate.web.services import Services
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import TestDatabase, World

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


# --- helpers shared with the other audit test modules ------------------------------------------


def make_trail(services: Services, world: World) -> None:
    """Real actions through the control layer: notes, a block, a denial, an invalid payload,
    and an approval request that is approved and executed."""
    gateway = services.gateway
    for n in range(3):
        gateway.submit(
            actor(world, "alice"),
            "customer.add_note",
            {
                "target": f"customer:{world.customer(n)}",
                "payload": {"text": f"note {n}"},
                "reason": f"trail note {n}",
            },
            Origin(f"trail-note-{n}", "10.0.0.1", "pytest"),
        )
    gateway.submit(
        actor(world, "alice"),
        "account.block",
        {
            "target": f"account:{world.account(0)}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "trail block",
        },
        Origin("trail-block"),
    )
    with pytest.raises(Forbidden):
        gateway.submit(
            actor(world, "audrey"),
            "account.block",
            {"target": f"account:{world.account(1)}", "payload": {}, "reason": "no"},
            Origin("trail-denied"),
        )
    with pytest.raises(InvalidPayload):
        gateway.submit(
            actor(world, "alice"),
            "customer.add_note",
            {"target": f"customer:{world.customer()}", "payload": {"text": ""}, "reason": "r"},
            Origin("trail-invalid"),
        )
    pending = gateway.submit(
        actor(world, "rita"),
        "account.unblock",
        {"target": f"account:{world.account(0)}", "payload": {}, "reason": "verified"},
        Origin("trail-unblock"),
    )
    assert pending.approval_id is not None
    services.approvals.decide(
        pending.approval_id, actor(world, "olga"), Decision.APPROVE, "ok", Origin("trail-approve")
    )


def records(db: Database) -> list[AuditRecord]:
    with db.reading() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))


def verify_now(db: Database, against: Checkpoint | None = None) -> Verification:
    with db.reading() as session:
        return verify(session, against=against)


def head_of(db: Database) -> Checkpoint:
    with db.reading() as session:
        return checkpoint(session)


@contextmanager
def tampering(db: Database) -> Iterator[Session]:
    """A session that writes to `audit_records` the way an attacker with database access
    would: around the append-only triggers (PostgreSQL: replica mode for this transaction;
    SQLite: triggers dropped, then reinstalled), committed on exit."""
    with db.engine.connect() as connection:
        transaction = connection.begin()
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        else:
            append_only.remove(connection)
        session = Session(bind=connection, autoflush=False)
        try:
            yield session
            session.flush()
        except BaseException:
            transaction.rollback()
            raise
        finally:
            session.close()
        if connection.dialect.name != "postgresql":
            append_only.install(connection)
        transaction.commit()


def renumber(session: Session, from_seq: int, by: int) -> None:
    """Shift the seq of every record at or after `from_seq` (in two steps: seq is a key)."""
    session.execute(
        update(AuditRecord)
        .where(AuditRecord.seq >= from_seq)
        .values(seq=-(AuditRecord.seq + by))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(AuditRecord)
        .where(AuditRecord.seq < 0)
        .values(seq=-AuditRecord.seq)
        .execution_options(synchronize_session=False)
    )


def rechain(session: Session, from_seq: int) -> None:
    """What an attacker who can compute hashes does after an edit: re-hash every record from
    `from_seq` on and move the head, so that the chain is self-consistent again."""
    rows = list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
    prev = GENESIS
    for row in rows:
        if row.seq >= from_seq:
            row.prev_hash = prev
            row.hash = record_hash(row)
        prev = row.hash
    session.flush()
    head = session.get(AuditChainHead, HEAD_ID)
    assert head is not None
    head.seq, head.hash = rows[-1].seq, rows[-1].hash


def forged_copy(model: AuditRecord, **changes: Any) -> AuditRecord:
    fields = {name: getattr(model, name) for name in HASHED_FIELDS}
    fields.update(id=new_id("aud"), reason="forged", **changes)
    row = AuditRecord(**fields)
    row.hash = record_hash(row)
    return row


@pytest.fixture
def trail(services: Services, world: World, db: Database) -> list[AuditRecord]:
    make_trail(services, world)
    rows = records(db)
    assert len(rows) >= 9
    return rows


# --- an honest chain ---------------------------------------------------------------------------


def test_real_actions_form_one_linked_chain_ending_at_the_head(
    trail: list[AuditRecord], db: Database
) -> None:
    assert {row.result for row in trail} >= {
        "succeeded",
        "denied",
        "invalid",
        "approval_requested",
        "approved",
    }
    assert [row.seq for row in trail] == list(range(1, len(trail) + 1))
    assert trail[0].prev_hash == GENESIS
    for previous, row in itertools.pairwise(trail):
        assert row.prev_hash == previous.hash, row.seq
    assert all(record_hash(row) == row.hash for row in trail)
    assert len({row.hash for row in trail}) == len(trail)
    assert verify_now(db) == Verification(True, len(trail))
    assert head_of(db) == Checkpoint(trail[-1].seq, trail[-1].hash)


def test_an_empty_chain_verifies_and_its_head_is_genesis(db: Database) -> None:
    assert verify_now(db) == Verification(True, 0)
    assert head_of(db) == Checkpoint(0, GENESIS)


def test_the_hash_covers_every_column_but_itself() -> None:
    columns = {column.name for column in AuditRecord.__table__.columns}
    assert set(HASHED_FIELDS) == columns - {"hash"}


def test_a_checkpoint_still_verifies_after_later_appends(
    trail: list[AuditRecord], services: Services, world: World, db: Database
) -> None:
    taken = head_of(db)
    make_trail(services, world)
    later = verify_now(db, against=taken)
    assert later.ok, later
    assert later.entries == len(records(db)) > len(trail)


def test_checkpoint_text_round_trips_and_malformed_text_is_refused() -> None:
    point = Checkpoint(12, "ab" * 32)
    assert Checkpoint.parse(str(point)) == point
    assert Checkpoint.parse(f"  {point}\n") == point
    for bad in (
        "",
        "12",
        "12:",
        "x:" + "a" * 64,
        "-1:" + "a" * 64,
        "1:" + "a" * 63,
        "1:" + "G" * 64,
    ):
        with pytest.raises(ValueError, match="checkpoint"):
            Checkpoint.parse(bad)


# --- tampering ---------------------------------------------------------------------------------

# A different value for every column the hash covers (seq is covered by the reordering tests).
FORGED_VALUES: dict[str, Callable[[AuditRecord], Any]] = {
    "id": lambda r: new_id("aud"),
    "occurred_at": lambda r: r.occurred_at + timedelta(microseconds=1),
    "request_id": lambda r: "forged-request",
    "execution_request_id": lambda r: "forged-execution",
    "approval_id": lambda r: "apr_forged",
    "actor_id": lambda r: "usr_forged",
    "actor_name": lambda r: "Mallory",
    "actor_roles": lambda r: ["admin"],
    "credential_id": lambda r: "tok_forged",
    "origin_ip": lambda r: "192.0.2.66",
    "user_agent": lambda r: "forged-agent",
    "action": lambda r: "customer.view_pii",
    "target": lambda r: "customer:cus_forged",
    "parameters": lambda r: {"text": "forged"},
    "reason": lambda r: "an innocent reason",
    "result": lambda r: "denied" if r.result != "denied" else "succeeded",
    "error_code": lambda r: "forged_code",
    "error_message": lambda r: "forged",
    "before": lambda r: {"status": "forged"},
    "after": lambda r: {"status": "forged"},
    "outcome": lambda r: {"note_id": "forged"},
    "flags": lambda r: {"near_duplicates": []},
    "policy_version": lambda r: "f" * 64,
    "prev_hash": lambda r: "e" * 64,
    "hash": lambda r: "d" * 64,
    # Set where there was none, or cleared where there was one: both change the hash.
    "trace_id": lambda r: None if r.trace_id else "f" * 32,
    "client_request_id": lambda r: None if r.client_request_id else "forged-client-id",
}


@pytest.mark.parametrize("field", ["trace_id", "client_request_id"])
def test_a_later_field_is_hashed_when_set_and_older_records_keep_their_hash(field: str) -> None:
    from opsgate.core.audit.chain import HASHED_FIELDS, hash_values
    from opsgate.core.canonical import canonical_json

    values = [f"value-{name}" for name in HASHED_FIELDS]
    position = HASHED_FIELDS.index(field)
    without: list[str | None] = [*values[:position], None, *values[position + 1 :]]
    legacy = {name: value for name, value in zip(HASHED_FIELDS, values, strict=True)}
    del legacy[field]
    # A record written before the field existed hashes exactly as it did then.
    assert hash_values(without) == hashlib.sha256(canonical_json(legacy).encode()).hexdigest()
    assert hash_values(values) != hash_values(without)


def test_editing_any_field_of_a_record_names_that_record(
    trail: list[AuditRecord], db: Database, owner_db: Database
) -> None:
    assert set(FORGED_VALUES) == {c.name for c in AuditRecord.__table__.columns} - {"seq"}
    victim = trail[len(trail) // 2]
    for column, forge in FORGED_VALUES.items():
        original = getattr(victim, column)
        with tampering(owner_db) as session:
            row = session.get(AuditRecord, victim.seq)
            assert row is not None
            forged = forge(row)
            assert forged != original, column
            setattr(row, column, forged)
            shown_id = row.id
        result = verify_now(db)
        assert not result.ok, column
        assert (result.first_bad_seq, result.first_bad_id) == (victim.seq, shown_id), column
        assert result.entries == victim.seq, column
        with tampering(owner_db) as session:
            row = session.get(AuditRecord, victim.seq)
            assert row is not None
            setattr(row, column, original)
        assert verify_now(db).ok, f"restoring {column} should restore the chain"


@pytest.mark.parametrize("position", ["first", "middle"])
def test_deleting_a_record_names_the_record_after_the_gap(
    trail: list[AuditRecord], db: Database, position: str, owner_db: Database
) -> None:
    index = 0 if position == "first" else len(trail) // 2
    with tampering(owner_db) as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq == trail[index].seq))
    result = verify_now(db)
    after = trail[index + 1]
    assert (result.ok, result.first_bad_seq, result.first_bad_id) == (False, after.seq, after.id)
    assert "missing" in (result.problem or "")


@pytest.mark.parametrize("distance", [1, 3])
def test_swapping_two_records_names_the_lower_position(
    trail: list[AuditRecord], db: Database, distance: int, owner_db: Database
) -> None:
    low, high = trail[2], trail[2 + distance]
    with tampering(owner_db) as session:
        for seq, new in ((low.seq, -1), (high.seq, low.seq), (-1, high.seq)):
            session.execute(
                update(AuditRecord)
                .where(AuditRecord.seq == seq)
                .values(seq=new)
                .execution_options(synchronize_session=False)
            )
    result = verify_now(db)
    assert (result.ok, result.first_bad_seq, result.first_bad_id) == (False, low.seq, high.id)


def test_swapping_two_records_contents_in_place_names_the_lower_position(
    trail: list[AuditRecord], db: Database, owner_db: Database
) -> None:
    low, high = trail[3], trail[5]
    movable = [name for name in (*HASHED_FIELDS, "hash") if name not in ("seq", "id")]
    with tampering(owner_db) as session:
        a, b = session.get(AuditRecord, low.seq), session.get(AuditRecord, high.seq)
        assert a is not None and b is not None
        for name in movable:
            first, second = getattr(a, name), getattr(b, name)
            setattr(a, name, second)
            setattr(b, name, first)
    result = verify_now(db)
    assert (result.ok, result.first_bad_seq, result.first_bad_id) == (False, low.seq, low.id)


@pytest.mark.parametrize("cut", [1, 3])
def test_truncating_the_tail_names_the_first_missing_seq(
    trail: list[AuditRecord], db: Database, cut: int, owner_db: Database
) -> None:
    kept = len(trail) - cut
    with tampering(owner_db) as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq > kept))
    result = verify_now(db)
    assert (result.ok, result.first_bad_seq, result.first_bad_id) == (False, kept + 1, None)
    assert result.entries == kept
    assert "missing" in (result.problem or "")
    # The head still remembers the true end: that is how the loss shows.
    assert head_of(db) == Checkpoint(trail[-1].seq, trail[-1].hash)


@pytest.mark.parametrize("forged_hash_is_valid", [True, False])
def test_inserting_a_forged_record_in_the_middle_is_detected(
    trail: list[AuditRecord], db: Database, forged_hash_is_valid: bool, owner_db: Database
) -> None:
    at = len(trail) // 2
    displaced = trail[at - 1]  # currently at seq `at`, pushed to `at + 1`
    forged = forged_copy(displaced, seq=at, prev_hash=trail[at - 2].hash)
    if not forged_hash_is_valid:
        forged.hash = "c" * 64
    with tampering(owner_db) as session:
        renumber(session, at, by=1)
        session.add(forged)
    result = verify_now(db)
    assert not result.ok
    if forged_hash_is_valid:
        # A well-chained forgery is indistinguishable on its own; the record it displaced
        # no longer fits.
        assert (result.first_bad_seq, result.first_bad_id) == (at + 1, displaced.id)
    else:
        assert (result.first_bad_seq, result.first_bad_id) == (at, forged.id)


def test_appending_a_forged_record_with_a_wrong_hash_names_it(
    trail: list[AuditRecord], db: Database, owner_db: Database
) -> None:
    last = trail[-1]
    forged = forged_copy(last, seq=last.seq + 1, prev_hash=last.hash)
    forged.hash = "b" * 64
    with tampering(owner_db) as session:
        session.add(forged)
        head = session.get(AuditChainHead, HEAD_ID)
        assert head is not None
        head.seq, head.hash = forged.seq, forged.hash
    result = verify_now(db)
    assert (result.ok, result.first_bad_seq, result.first_bad_id) == (False, forged.seq, forged.id)
    assert "altered" in (result.problem or "")


def test_appending_a_well_chained_record_without_moving_the_head_is_detected(
    trail: list[AuditRecord], db: Database, owner_db: Database
) -> None:
    last = trail[-1]
    with tampering(owner_db) as session:
        session.add(forged_copy(last, seq=last.seq + 1, prev_hash=last.hash))
    result = verify_now(db)
    assert not result.ok
    assert result.first_bad_seq == last.seq + 1  # the record the head does not account for


@pytest.mark.parametrize("attack", ["edit", "drop_last", "drop_first"])
def test_a_full_rewrite_passes_plain_verify_but_not_the_checkpoint(
    trail: list[AuditRecord], db: Database, attack: str, owner_db: Database
) -> None:
    taken = head_of(db)
    with tampering(owner_db) as session:
        if attack == "edit":
            victim = session.get(AuditRecord, trail[2].seq)
            assert victim is not None
            victim.reason = "nothing to see here"
            session.flush()
            rechain(session, trail[2].seq)
        elif attack == "drop_last":
            session.execute(delete(AuditRecord).where(AuditRecord.seq == trail[-1].seq))
            rechain(session, trail[-1].seq)
        else:
            session.execute(delete(AuditRecord).where(AuditRecord.seq == 1))
            renumber(session, 2, by=-1)
            session.expire_all()
            rechain(session, 1)
    assert verify_now(db).ok  # self-consistent: only an outside checkpoint can tell
    result = verify_now(db, against=taken)
    assert not result.ok
    assert result.first_bad_seq == taken.seq
    assert "checkpoint" in (result.problem or "")


def test_a_forged_archive_cannot_hide_deleted_oldest_records(
    trail: list[AuditRecord], db: Database
) -> None:
    """Deleting the oldest records and claiming they were archived must not verify: no
    `audit.archive` record in the chain vouches for that archive. The attacker needs no
    trigger bypass here, only the application's own table rights."""
    cut = trail[3]
    with db.writing() as session:
        permit = AuditArchivePermit(id=new_id("prm"))
        session.add(permit)
        session.flush()
        session.execute(delete(AuditRecord).where(AuditRecord.seq <= cut.seq))
        session.delete(permit)
        session.add(
            AuditArchive(
                id=new_id("arc"),
                first_seq=1,
                through_seq=cut.seq,
                through_hash=cut.hash,
                records=cut.seq,
                file_name="nothing.jsonl",
                file_sha256="0" * 64,
                archived_at=cut.occurred_at,
                archived_by="mallory",
            )
        )
        session.commit()
    assert len(records(db)) == len(trail) - cut.seq
    result = verify_now(db)
    assert not result.ok


def test_verify_is_not_fooled_by_an_append_committed_while_it_walks(
    trail: list[AuditRecord],
    db: Database,
    clock: FrozenClock,
    test_db: TestDatabase,
    request: pytest.FixtureRequest,
) -> None:
    """An honest append landing between the walk's last read and its read of the head is
    normal traffic, not tampering."""
    walked = 0

    def append_after_the_last_record(n: int) -> None:
        nonlocal walked
        walked += n
        if walked == len(trail):
            with db.writing() as other:
                record(
                    other,
                    AuditEntry(action="test.concurrent", result=AuditResult.SUCCEEDED),
                    actor=None,
                    origin=Origin("concurrent-append"),
                    policy_version=None,
                    now=clock.now(),
                )
                other.commit()

    with db.reading() as session:
        result = verify(session, progress=append_after_the_last_record)
    assert walked == len(trail)
    assert result.ok, result
    assert verify_now(db) == Verification(True, len(trail) + 1)


# --- the append-only triggers ------------------------------------------------------------------


def refused_statements(backend: str) -> list[Any]:
    statements: list[Any] = [
        update(AuditRecord).values(reason="edited"),
        update(AuditRecord).where(AuditRecord.seq == 1).values(result="succeeded"),
        delete(AuditRecord),
        delete(AuditRecord).where(AuditRecord.seq == 2),
    ]
    if backend == "postgresql":
        statements.append(text("TRUNCATE audit_records"))
    return statements


def execute_and_commit(db: Database, statement: Any) -> None:
    with db.writing() as session:
        session.execute(statement.execution_options(synchronize_session=False))
        session.commit()


def test_triggers_refuse_update_delete_and_truncate_through_normal_sessions(
    trail: list[AuditRecord], db: Database, test_db: TestDatabase, owner_db: Database
) -> None:
    # As the owner: the triggers bind even the role that could drop them, while it has not
    # (the app role is refused before the triggers: tests/db/test_roles.py).
    for statement in refused_statements(test_db.backend):
        with pytest.raises(DBAPIError, match="append-only"):
            execute_and_commit(owner_db, statement)
    with owner_db.writing() as session:
        row = session.get(AuditRecord, 1)
        assert row is not None
        row.reason = "edited through the ORM"
        with pytest.raises(DBAPIError, match="append-only"):
            session.commit()
    after = records(db)
    assert [(r.seq, r.hash, r.reason) for r in after] == [(r.seq, r.hash, r.reason) for r in trail]
    assert verify_now(db).ok


def test_triggers_are_back_after_tampering(
    trail: list[AuditRecord], db: Database, test_db: TestDatabase, owner_db: Database
) -> None:
    with tampering(owner_db) as session:
        session.execute(delete(AuditRecord).where(AuditRecord.seq == trail[-1].seq))
    for statement in refused_statements(test_db.backend):
        with pytest.raises(DBAPIError, match="append-only"):
            execute_and_commit(owner_db, statement)


def test_a_stray_permit_row_is_needed_for_any_delete(
    trail: list[AuditRecord], db: Database
) -> None:
    """DELETE goes through only inside a transaction holding an archive permit."""
    with db.writing() as session:
        session.add(AuditArchivePermit(id=new_id("prm")))
        session.flush()
        session.execute(delete(AuditRecord).where(AuditRecord.seq == 1))
        session.rollback()
    with db.reading() as session:
        assert session.scalar(select(AuditArchivePermit.id)) is None
    assert len(records(db)) == len(trail)


# --- appends read the head, never the table ----------------------------------------------------


def test_an_append_touches_audit_records_only_with_its_insert(
    trail: list[AuditRecord], db: Database, clock: FrozenClock, test_db: TestDatabase
) -> None:
    statements: list[str] = []

    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.writing() as session:
            row = record(
                session,
                AuditEntry(action="test.append", result=AuditResult.SUCCEEDED),
                actor=None,
                origin=Origin("append-probe"),
                policy_version=None,
                now=clock.now(),
            )
            session.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    touching = [s for s in statements if re.search(r"\baudit_records\b", s, re.IGNORECASE)]
    assert len(touching) == 1, touching
    assert touching[0].lstrip().upper().startswith("INSERT INTO AUDIT_RECORDS")
    head_reads = [s for s in statements if "audit_chain_head" in s and "SELECT" in s.upper()]
    assert len(head_reads) == 1, statements
    if test_db.backend == "postgresql":
        assert "FOR UPDATE" in head_reads[0].upper()
    assert (row.seq, row.prev_hash) == (trail[-1].seq + 1, trail[-1].hash)
    assert verify_now(db).ok
