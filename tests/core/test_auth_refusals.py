"""Refusal windows: per source, exact across processes, nothing lost to a late count."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select

from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.actors import Origin
from opsgate.core.identity.auth_refusals import Refusals
from opsgate.db.models import AuditRecord, AuthRefusalWindow
from opsgate.settings import Settings
from opsgate.web.services import Services

ENTRY = AuditEntry(action="auth.token", result=AuditResult.DENIED, error_code="unauthenticated")


def origin(ip: str) -> Origin:
    return Origin(request_id=f"req-{ip}", ip=ip)


def counted(services: Services) -> int:
    with services.db.reading() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.action.in_(("auth.token", "auth.refusals")))
        )
        return sum(int((r.outcome or {}).get("refusals", 1)) for r in rows)


@pytest.fixture
def second_process(settings: Settings, clock: FrozenClock) -> Iterator[Services]:
    """Another app process on the same database (its own engine and pool)."""
    other = Services.build(settings, clock=clock)
    yield other
    other.db.dispose()


def test_each_source_has_its_own_limit(services: Services) -> None:
    refusals = Refusals(services.gateway, limit=3)
    assert [refusals.refuse(ENTRY, origin("10.0.0.1")) for _ in range(4)] == [
        False,
        False,
        False,
        True,
    ]
    assert refusals.refuse(ENTRY, origin("10.0.0.2")) is False


def test_two_processes_count_one_window_exactly(
    services: Services, second_process: Services
) -> None:
    sides = [Refusals(services.gateway, 1000), Refusals(second_process.gateway, 1000)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: sides[i % 2].refuse(ENTRY, origin("10.0.0.9")), range(200)))
    with services.db.reading() as session:
        [window] = session.scalars(select(AuthRefusalWindow))
    assert (window.refusals, window.audited) == (200, 1)
    sides[0].flush(everything=True)
    assert counted(services) == 200


def test_a_count_that_lands_after_the_flush_is_carried_by_the_next(
    services: Services, clock: FrozenClock
) -> None:
    refusals = Refusals(services.gateway, 60)
    for _ in range(3):
        refusals.refuse(ENTRY, origin("10.0.0.3"))
    clock.advance(timedelta(minutes=1))
    assert refusals.flush() == 1
    # A process whose clock lags still counts into the closed window.
    with services.db.writing() as session:
        window = session.scalars(select(AuthRefusalWindow)).one()
        window.refusals += 2
        session.commit()
    assert refusals.flush() == 1
    assert counted(services) == 5
