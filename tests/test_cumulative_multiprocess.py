"""Structuring across processes: one reversal split over three Idempotency-Keys and sent at
once through two `opsgate serve` processes on PostgreSQL never moves more than the approval
threshold without an approver (DESIGN.md invariant 9)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opsgate.db.engine import Database
from opsgate_demo.models import Payment
from tests.conftest import TestDatabase
from tests.core.test_aggregates import payments_of_different_customers
from tests.servers import Server, two_servers_on

pytestmark = pytest.mark.multiprocess

THRESHOLD = 10_000  # the demo policy: one approval above 100.00 on a payment
PARTS = (10_000, 9_999, 5_872)  # 258.71


@pytest.fixture
def two_servers(test_db: TestDatabase, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    if test_db.backend != "postgresql":
        pytest.skip("several server processes share one database on PostgreSQL")
    with two_servers_on(test_db.url, tmp_path) as servers:
        yield servers


def test_a_split_over_three_keys_and_two_processes_stays_under_the_threshold(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    db = Database(test_db.url)
    payments = payments_of_different_customers(db, 3, at_least=sum(PARTS))
    world = test_db.world
    barrier = threading.Barrier(len(PARTS) * len(payments))
    answers: dict[tuple[str, int], int] = {}

    def send(payment_id: str, n: int) -> None:
        server = two_servers[n % 2]
        barrier.wait()
        response = httpx.post(
            f"{server.base_url}/api/v1/actions/payment.reverse",
            json={
                "target": f"payment:{payment_id}",
                "payload": {"amount_minor": PARTS[n], "reason_code": "customer_dispute"},
                "reason": "customer disputes the charge",
            },
            headers=world.auth("alice") | {"Idempotency-Key": f"split-{payment_id}-{n}"},
            timeout=60,
        )
        answers[(payment_id, n)] = response.status_code

    threads = [
        threading.Thread(target=send, args=(p.id, n)) for p in payments for n in range(len(PARTS))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    try:
        assert sorted(set(answers.values())) <= [200, 202]
        with db.reading() as session:
            for payment in payments:
                executed = sum(PARTS[n] for n in range(len(PARTS)) if answers[payment.id, n] == 200)
                row = session.get(Payment, payment.id)
                assert row is not None
                assert row.reversed_minor == executed
                assert executed <= THRESHOLD, (payment.id, answers)
    finally:
        db.dispose()
