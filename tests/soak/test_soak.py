"""Soak: mixed traffic over three `opsgate serve` processes on PostgreSQL and the ledger
service, with servers and the ledger SIGKILLed at random moments; then the invariant checker
(tests/soak/invariants.py).

The suite runs a short version; `make soak` runs it for OPSGATE_SOAK_SECONDS (default 1200)
and writes its figures to test-output/soak.json.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from opsgate.core.integrations.reconcile import reconcile
from opsgate.db.engine import Database
from opsgate.settings import Settings
from opsgate.web.services import Services
from opsgate_demo.models import Account, AccountStatus, Note, Payment, PaymentStatus
from tests.conftest import TestDatabase, demo_policy_with
from tests.remote_stack import LEDGER_SECRET, RemoteStack, ledger_database, remote_stack
from tests.soak.invariants import check, count_rows
from tests.soak.traffic import Killer, Traffic

pytestmark = pytest.mark.multiprocess

SECONDS = float(os.environ.get("OPSGATE_SOAK_SECONDS", "30"))
MAX_KILLS = int(os.environ.get("OPSGATE_SOAK_MAX_KILLS", str(max(3, int(SECONDS / 4)))))
CLIENTS = int(os.environ.get("OPSGATE_SOAK_CLIENTS", "6"))
REPORT = Path("test-output") / "soak.json"


@pytest.fixture
def stack(test_db: TestDatabase, tmp_path: Path) -> Iterator[RemoteStack]:
    if test_db.backend != "postgresql":
        pytest.skip("the soak runs several processes, which is PostgreSQL's job")
    # The demo policy, with room for the traffic: 30 reversals an hour per operator would
    # refuse most of it after a minute.
    policy = tmp_path / "soak-policy.toml"
    policy.write_text(demo_policy_with({"max_count = 30": "max_count = 100000"}))
    with (
        ledger_database(test_db.backend, tmp_path) as ledger_url,
        remote_stack(
            test_db.url,
            ledger_url,
            tmp_path,
            processes=3,
            # A short client deadline keeps unknown outcomes few and quick to settle.
            timeout_seconds=3.0,
            env={"OPSGATE_RECONCILE_INTERVAL_SECONDS": "2", "OPSGATE_POLICY": str(policy)},
        ) as started,
    ):
        yield started


def _targets(url: str) -> tuple[list[str], list[str], list[str]]:
    db = Database(url)
    try:
        with db.reading() as session:
            payments = list(
                session.scalars(
                    select(Payment.id)
                    .join(Account, Account.id == Payment.account_id)
                    .where(
                        Account.status == AccountStatus.ACTIVE,
                        Payment.status == PaymentStatus.POSTED,
                        Payment.amount_minor >= 5_000,
                    )
                    .order_by(Payment.id)
                    .limit(40)
                )
            )
            accounts = list(
                session.scalars(
                    select(Account.id)
                    .where(Account.status == AccountStatus.ACTIVE, Account.customer_id.is_not(None))
                    .limit(12)
                )
            )
            customers = list(session.scalars(select(Account.customer_id).distinct().limit(12)))
    finally:
        db.dispose()
    return payments, accounts, customers


def _settle(stack: RemoteStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the background loops do, run to the end: reconcile every open backend call."""
    monkeypatch.setenv("OPSGATE_LEDGER_SECRET", LEDGER_SECRET)
    services = Services.build(
        Settings(database_url=stack.database_url, integrations=stack.integrations)
    )
    try:
        for _round in range(3):
            reconcile(services.gateway, pending_after=timedelta(0))
    finally:
        services.gateway.backends.close()
        services.db.dispose()


def test_invariants_hold_under_mixed_traffic_and_random_kills(
    stack: RemoteStack, test_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    payments, accounts, customers = _targets(test_db.url)
    notes_before = count_rows(test_db.url, Note)
    db = Database(test_db.url)
    traffic = Traffic(
        stack, db, test_db.world.tokens, test_db.world.user_ids, payments, accounts, customers
    )
    killer = Killer(stack, MAX_KILLS)
    clients = [threading.Thread(target=traffic.client, args=(n,)) for n in range(CLIENTS)]
    chaos = threading.Thread(target=killer.run)
    for thread in (*clients, chaos):
        thread.start()
    stop = threading.Event()
    stop.wait(SECONDS)
    killer.stop.set()
    chaos.join()
    traffic.stop.set()
    for thread in clients:
        thread.join()

    traffic.retry_all()
    db.dispose()
    _settle(stack, monkeypatch)
    found = check(
        test_db.url, stack.ledger.database_url, traffic.answers, notes_before=notes_before
    )
    verified = stack.cli("audit", "verify")
    found.expect(verified.returncode == 0, f"audit verify: {verified.stdout} {verified.stderr}")

    statuses = Counter(answer.status for answer in traffic.answers)
    report = found.figures | {
        "seconds": SECONDS,
        "kills": len(killer.kills),
        "killed": dict(Counter(killer.kills)),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answers_by_kind": {
            f"{kind} {status} {code}": n
            for (kind, status, code), n in sorted(
                Counter(
                    (a.kind, a.status, str(a.body.get("code") or a.body.get("status")))
                    for a in traffic.answers
                ).items()
            )
        },
        "broken": found.broken,
    }
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2), encoding="utf-8")
    assert killer.kills, "the soak killed nothing"
    assert statuses[200] > 0, statuses
    assert found.broken == [], json.dumps(report, indent=2)
