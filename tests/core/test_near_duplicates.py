"""Near-duplicate flags: a repeat of the same amount, and a possible split (the same actor's
requests on the same target adding up within a day)."""

from __future__ import annotations

from sqlalchemy import select

from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.web.services import Services
from tests.conftest import World
from tests.core.test_aggregates import approval, payments_of_different_customers, reverse


def audit_flags(db: Database, request_id: str) -> dict[str, object] | None:
    with db.reading() as session:
        record = session.scalars(
            select(AuditRecord).where(
                AuditRecord.request_id == request_id, AuditRecord.action == "payment.reverse"
            )
        ).one()
        return record.flags


def test_a_split_is_flagged_on_the_approval_and_its_audit_record(
    services: Services, db: Database, world: World
) -> None:
    [payment] = payments_of_different_customers(db, 1, at_least=25_871)
    reverse(services, world, payment.id, 10_000, "sp-1")
    held = reverse(services, world, payment.id, 9_999, "sp-2")
    flags = approval(db, held.approval_id).flags
    assert flags is not None
    split = flags["possible_split"]
    assert (split["cumulative_minor"], split["window"]) == (19_999, "24h")
    assert [(e["request_id"], e["amount_minor"]) for e in split["earlier"]] == [("sp-1", 10_000)]
    assert audit_flags(db, "sp-2") == flags


def test_an_executed_split_is_flagged_in_the_audit_trail(
    services: Services, db: Database, world: World
) -> None:
    [payment] = payments_of_different_customers(db, 1, at_least=10_000)
    reverse(services, world, payment.id, 5_000, "ex-1")
    second = reverse(services, world, payment.id, 3_000, "ex-2")
    assert second.status == "succeeded"
    flags = audit_flags(db, "ex-2")
    assert flags is not None and flags["possible_split"]["cumulative_minor"] == 8_000
    assert audit_flags(db, "ex-1") is None


def test_another_persons_request_on_the_target_is_no_split(
    services: Services, db: Database, world: World
) -> None:
    [payment] = payments_of_different_customers(db, 1, at_least=10_000)
    reverse(services, world, payment.id, 5_000, "other-1", who="alice")
    reverse(services, world, payment.id, 3_000, "other-2", who="bob")
    assert audit_flags(db, "other-2") is None
