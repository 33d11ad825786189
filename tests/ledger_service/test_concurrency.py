"""A real `opsgate demo ledger-service serve` under concurrent calls (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from opsgate.db.engine import Database
from tests.conftest import World
from tests.domain.test_money import ledger_is_consistent
from tests.ledger_service.conftest import (
    SECRET,
    payment_row,
    post_action,
    reversal,
    reversible_payment,
)
from tests.ledger_service.test_actions import reversal_count
from tests.servers import Server, free_port

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def server(ledger_url: str, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    log_path = tmp_path / "ledger.log"
    env = os.environ | {"OPSGATE_LEDGER_DATABASE_URL": ledger_url, "OPSGATE_LEDGER_SECRET": SECRET}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "opsgate.cli",
                "demo",
                "ledger-service",
                "serve",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"ledger service did not start:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{running.base_url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield running
    running.stop()


def test_twenty_threads_with_one_key_have_one_effect(
    server: Server, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, 100)

    def attempt(_n: int) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            return post_action(client, body, key="one-key")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(attempt, range(20)))

    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    succeeded = [a for a in answers if a.status_code == 200]
    fresh = [a for a in succeeded if "Idempotent-Replayed" not in a.headers]
    assert len(fresh) == 1
    assert {a.content for a in succeeded} == {fresh[0].content}
    assert all(a.json()["code"] == "idempotency_in_flight" for a in answers if a.status_code == 409)
    assert reversal_count(ledger_db, payment.id) == 1
    assert payment_row(ledger_db, payment.id).reversed_minor == payment.reversed_minor + 100
    ledger_is_consistent(ledger_db)


def test_different_keys_cannot_reverse_more_than_the_payment(
    server: Server, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db, 1)
    share = -(-payment.amount_minor // 4)  # four shares cover the payment; the fifth cannot fit
    fits = payment.amount_minor // share

    def attempt(n: int) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            body = reversal(world, payment.id, share, request_id=f"req-part-{n}")
            return post_action(client, body, key=f"part-{n}")

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(attempt, range(10)))

    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * fits + [409] * (10 - fits), [a.text for a in answers]
    refused = [a.json()["code"] for a in answers if a.status_code == 409]
    assert set(refused) == {"reversal_exceeds_payment"}
    row = payment_row(ledger_db, payment.id)
    assert row.reversed_minor == fits * share <= payment.amount_minor
    assert reversal_count(ledger_db, payment.id) == fits
    ledger_is_consistent(ledger_db)
    # Every request line of the server carries the service name.
    assert all(line.get("service") == "ledger" for line in server.log_lines())
