"""Anchors of the audit chain's head (DESIGN.md invariant 11) on SQLite and PostgreSQL: a
rewrite by the database's owner after an anchor is caught by plain verification, anchors are
written on N records and on an interval, to the file sink and the webhook outbox, and
anchoring that stopped is reported."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from opsgate.core.audit.anchoring import (
    Anchoring,
    AnchorLoop,
    AnchorRefused,
    anchor_head,
    verify_anchored,
)
from opsgate.core.audit.anchors import Anchor, AnchorKey, AnchorSink
from opsgate.core.audit.chain import Verification, verify
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.actors import Origin
from opsgate.core.integrations.config import NO_INTEGRATIONS
from opsgate.db import append_only
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord, OutboxEvent
from opsgate.settings import get_settings
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World
from tests.core.test_audit_chain import actor, make_trail, rechain, records, renumber
from tests.web.test_api_audit_trail import small_reversible_payment
from tests.webhook_receiver import hook, integrations


def anchoring(**changes: object) -> Anchoring:
    """The settings' anchoring (this test's own directory and key), with `changes`."""
    get_settings.cache_clear()
    setup = Anchoring.from_settings(get_settings())
    return replace(setup, **changes)  # type: ignore[arg-type]


def reverse_a_payment(services: Services, world: World, db: Database) -> AuditRecord:
    """A real reversal through the control layer; its audit record."""
    payment = small_reversible_payment(db)
    body = {
        "target": f"payment:{payment.id}",
        "payload": {"amount_minor": 100, "reason_code": "customer_dispute"},
        "reason": "customer disputes the charge",
    }
    result = services.gateway.submit(
        actor(world, "alice"), "payment.reverse", body, Origin("rev-1"), "rev-1"
    )
    assert result.status == "succeeded"
    [row] = [r for r in records(db) if r.request_id == "rev-1" and r.action == "payment.reverse"]
    return row


def _erase(session: Session, victim_seq: int) -> None:
    session.execute(delete(AuditRecord).where(AuditRecord.seq == victim_seq))
    renumber(session, victim_seq + 1, by=-1)
    session.expire_all()
    rechain(session, victim_seq)


def erase_as_owner(test_db: TestDatabase, owner_db: Database, victim_seq: int) -> None:
    """The attack of issue #12: as the table's owner, switch the append-only trigger off,
    delete one record, re-chain the rest with opsgate's own hash and move the head. On
    SQLite, the same by editing the file (drop the triggers, edit, put them back)."""
    if test_db.backend == "postgresql":
        with owner_db.engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(
                "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only"
            )
            session = Session(bind=connection, autoflush=False)
            _erase(session, victim_seq)
            session.flush()
            connection.exec_driver_sql(
                "ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only"
            )
        return
    path = test_db.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:  # the file, not opsgate's engine
        raw.execute("DROP TRIGGER audit_records_no_update")
        raw.execute("DROP TRIGGER audit_records_no_delete")
    with owner_db.writing() as session:
        _erase(session, victim_seq)
        session.commit()
    with owner_db.engine.begin() as connection:
        append_only.install(connection)


@pytest.fixture
def anchored_reversal(services: Services, world: World, db: Database) -> tuple[AuditRecord, Anchor]:
    """A trail with a reversal in it, then more actions, then an anchor of the head."""
    make_trail(services, world)
    reversal = reverse_a_payment(services, world, db)
    make_trail(services, world)
    anchor = anchor_head(db, anchoring(), NO_INTEGRATIONS, services.clock.now())
    assert anchor is not None and anchor.seq == records(db)[-1].seq > reversal.seq
    return reversal, anchor


def verify_now(db: Database, setup: Anchoring, clock: FrozenClock) -> Verification:
    with db.reading() as session:
        return verify_anchored(session, setup, clock.now())


# --- the attack --------------------------------------------------------------------------------


def test_an_owners_rewrite_after_an_anchor_is_caught_by_plain_verification(
    anchored_reversal: tuple[AuditRecord, Anchor],
    test_db: TestDatabase,
    db: Database,
    owner_db: Database,
    clock: FrozenClock,
) -> None:
    reversal, anchor = anchored_reversal
    erase_as_owner(test_db, owner_db, reversal.seq)
    assert reversal.id not in {r.id for r in records(db)}
    with db.reading() as session:
        assert verify(session).ok  # self-consistent: the chain alone cannot tell
    result = verify_now(db, anchoring(), clock)
    assert not result.ok
    # One record fewer: the anchored seq is past the new head.
    assert (result.first_bad_seq, result.anchor) == (anchor.seq, str(anchor))
    assert "the anchor's record is not in the chain" in (result.problem or "")


def test_verify_api_catches_the_rewrite_with_no_checkpoint_given(
    anchored_reversal: tuple[AuditRecord, Anchor],
    test_db: TestDatabase,
    client: TestClient,
    world: World,
    owner_db: Database,
) -> None:
    reversal, anchor = anchored_reversal
    before = client.get("/api/v1/audit/verify", headers=world.auth("audrey")).json()
    assert (before["ok"], before["anchor"]) == (True, str(anchor))
    erase_as_owner(test_db, owner_db, reversal.seq)
    after = client.get("/api/v1/audit/verify", headers=world.auth("audrey")).json()
    assert after["ok"] is False
    assert "anchor" in after["problem"]


def test_anchoring_refuses_to_sign_a_head_that_does_not_extend_the_last_anchor(
    anchored_reversal: tuple[AuditRecord, Anchor],
    test_db: TestDatabase,
    db: Database,
    owner_db: Database,
    clock: FrozenClock,
) -> None:
    reversal, anchor = anchored_reversal
    erase_as_owner(test_db, owner_db, reversal.seq)
    with pytest.raises(AnchorRefused, match="anchor"):
        anchor_head(db, anchoring(), NO_INTEGRATIONS, clock.now(), force=True)
    assert anchoring().sink.latest() == anchor  # nothing vouches for the rewrite


# --- the anchors themselves ----------------------------------------------------------------------


def test_an_edited_anchor_line_or_an_unknown_key_breaks_verification(
    anchored_reversal: tuple[AuditRecord, Anchor], db: Database, clock: FrozenClock, tmp_path: Path
) -> None:
    _, anchor = anchored_reversal
    setup = anchoring()
    lines = setup.sink.path.read_text().splitlines()
    edited = json.loads(lines[-1]) | {"seq": anchor.seq - 1}
    setup.sink.path.write_text("\n".join([*lines[:-1], json.dumps(edited)]) + "\n")
    forged = verify_now(db, setup, clock)
    assert not forged.ok and "signature" in (forged.problem or "")

    stranger = AnchorKey.load(tmp_path / "stranger.pem", create=True)
    setup.sink.append(stranger.sign(anchor.checkpoint, clock.now()))
    unknown = verify_now(db, setup, clock)
    assert not unknown.ok and "not a trusted anchor key" in (unknown.problem or "")


def test_a_rotated_key_stays_trusted_through_the_trusted_keys_setting(
    anchored_reversal: tuple[AuditRecord, Anchor], db: Database, clock: FrozenClock, tmp_path: Path
) -> None:
    from opsgate.core.audit.anchors import public_key_text

    old = anchoring()
    old_public = public_key_text(old.signing_key().public)
    rotated = anchoring(key_file=tmp_path / "new-key.pem")
    assert not verify_now(db, rotated, clock).ok  # the old anchor's key is unknown now
    trusting = anchoring(key_file=tmp_path / "new-key.pem", trusted_text=old_public)
    assert verify_now(db, trusting, clock).ok


def test_the_file_sink_is_one_fsynced_json_line_per_anchor(
    services: Services, world: World, db: Database, clock: FrozenClock
) -> None:
    setup = anchoring()
    make_trail(services, world)
    first = anchor_head(db, setup, NO_INTEGRATIONS, clock.now())
    assert anchor_head(db, setup, NO_INTEGRATIONS, clock.now()) is None  # head unchanged
    make_trail(services, world)
    second = anchor_head(db, setup, NO_INTEGRATIONS, clock.now())
    assert setup.sink.all() == [first, second]
    assert AnchorSink(setup.sink.directory).latest() == second
    assert second is not None  # another process with the same head writes no second line:
    assert not setup.sink.append(replace(second, signature="x"), unless_last=True)
    assert setup.sink.all() == [first, second]


def test_each_anchor_is_queued_for_webhooks_subscribed_to_audit_anchor(
    services: Services, world: World, db: Database, clock: FrozenClock
) -> None:
    make_trail(services, world)
    configured = integrations(
        hook("external_log", "https://log.example.com/in", events=frozenset({"audit.anchor"})),
        hook(
            "approvals_only", "https://chat.example.com/in", events=frozenset({"approval.decided"})
        ),
    )
    anchor = anchor_head(db, anchoring(), configured, clock.now())
    assert anchor is not None
    with db.reading() as session:
        events = list(session.scalars(select(OutboxEvent)))
    assert [(e.event_type, e.subscription) for e in events] == [("audit.anchor", "external_log")]
    assert events[0].payload["anchor"] == json.loads(json.dumps(anchor.as_dict()))


# --- when anchors are written ------------------------------------------------------------------


def append_records(db: Database, clock: FrozenClock, n: int) -> None:
    for i in range(n):
        with db.writing() as session:
            record(
                session,
                AuditEntry(action="test.append", result=AuditResult.SUCCEEDED),
                actor=None,
                origin=Origin(f"append-{i}"),
                policy_version=None,
                now=clock.now(),
            )
            session.commit()


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def head_seq(db: Database) -> int:
    return records(db)[-1].seq


def test_the_loop_anchors_as_soon_as_n_records_follow_the_last_anchor(
    db: Database, clock: FrozenClock
) -> None:
    setup = anchoring(interval=None, every_records=5)
    loop = AnchorLoop(db, setup, NO_INTEGRATIONS, clock, poll=0.05)
    loop.start()
    try:
        append_records(db, clock, 4)
        time.sleep(0.3)
        assert setup.sink.latest() is None  # 4 of 5: not yet
        append_records(db, clock, 1)
        assert eventually(lambda: (a := setup.sink.latest()) is not None and a.seq == 5)
    finally:
        loop.stop()


def test_the_loop_anchors_a_moved_head_once_the_interval_has_passed(
    db: Database, clock: FrozenClock
) -> None:
    setup = anchoring(interval=timedelta(seconds=60), every_records=0)
    loop = AnchorLoop(db, setup, NO_INTEGRATIONS, clock, poll=0.05)
    loop.start()
    try:
        append_records(db, clock, 2)
        time.sleep(0.3)
        assert setup.sink.latest() is None
        clock.advance(timedelta(seconds=61))
        assert eventually(lambda: (a := setup.sink.latest()) is not None and a.seq == 2)
        clock.advance(timedelta(seconds=61))
        time.sleep(0.3)
        assert len(setup.sink.all()) == 1  # the head has not moved: nothing to add
    finally:
        loop.stop()


# --- anchoring that stopped --------------------------------------------------------------------


def test_too_many_records_since_the_last_anchor_is_a_finding(
    db: Database, clock: FrozenClock
) -> None:
    setup = anchoring(interval=None, every_records=5)
    append_records(db, clock, 5)
    anchor_head(db, setup, NO_INTEGRATIONS, clock.now())
    append_records(db, clock, 10)
    assert verify_now(db, setup, clock).findings == ()  # twice N: still within
    append_records(db, clock, 1)
    result = verify_now(db, setup, clock)
    assert result.ok
    assert len(result.findings) == 1 and "anchoring has stopped: 11 records" in result.findings[0]


def test_a_record_waiting_more_than_two_intervals_for_an_anchor_is_a_finding(
    db: Database, clock: FrozenClock
) -> None:
    setup = anchoring(interval=timedelta(minutes=5), every_records=0)
    append_records(db, clock, 1)
    anchor_head(db, setup, NO_INTEGRATIONS, clock.now())
    clock.advance(timedelta(hours=1))
    assert verify_now(db, setup, clock).findings == ()  # nothing new: nothing to anchor
    append_records(db, clock, 1)
    clock.advance(timedelta(minutes=10))
    assert verify_now(db, setup, clock).findings == ()
    clock.advance(timedelta(minutes=2))
    [finding] = verify_now(db, setup, clock).findings
    assert "record seq 2" in finding and "not anchored yet" in finding
