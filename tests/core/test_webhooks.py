"""Delivering the outbox: signatures, retries, dead letters, concurrency, formats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from opsgate.cli import app as cli
from opsgate.core.approvals.gate import Decision
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.actors import Origin
from opsgate.core.integrations import outbox
from opsgate.core.integrations.config import Integrations
from opsgate.core.integrations.webhooks import (
    MAX_DELAY,
    Deliverer,
    DeliveryReport,
    NotDead,
    retry_dead,
    retry_delay,
    signature,
)
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord, OutboxEvent
from opsgate.settings import get_settings
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World
from tests.servers import free_port
from tests.webhook_receiver import (
    SECRET,
    Receiver,
    actor,
    hook,
    integrations,
    request_unblock,
    running_receiver,
    with_integrations,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def origin(request_id: str) -> Origin:
    return Origin(request_id=request_id, ip="127.0.0.1", user_agent="pytest", trace_id=TRACE)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def deliverers(db: Database, clock: FrozenClock) -> Iterator[list[Deliverer]]:
    """Deliverers made by `make`, closed after the test."""
    made: list[Deliverer] = []
    yield made
    for deliverer in made:
        deliverer.close()


def make(
    made: list[Deliverer],
    db: Database,
    configured: Integrations,
    clock: FrozenClock,
    public_url: str | None = None,
) -> Deliverer:
    deliverer = Deliverer(db, configured, clock, public_url=public_url, rng=random.Random(7))
    made.append(deliverer)
    return deliverer


def rows(db: Database) -> list[OutboxEvent]:
    with db.reading() as session:
        return list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def verify(secret_key: bytes, received_headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side of Standard Webhooks, written out independently."""
    signed = f"{received_headers['webhook-id']}.{received_headers['webhook-timestamp']}."
    expected = base64.b64encode(
        hmac.new(secret_key, signed.encode() + body, hashlib.sha256).digest()
    ).decode()
    offered = [v.split(",", 1)[1] for v in received_headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def test_an_event_is_delivered_after_commit_signed(
    services: Services,
    db: Database,
    world: World,
    clock: FrozenClock,
    receiver: Receiver,
    deliverers: list[Deliverer],
) -> None:
    configured = integrations(hook("audit_sink", receiver.url))
    notifying = with_integrations(services, configured)
    deliverer = make(deliverers, db, configured, clock, public_url="https://ops.example.com/")
    approval_id = request_unblock(notifying, world, origin)
    assert receiver.received() == []  # the action itself sends nothing

    assert deliverer.deliver_due() == DeliveryReport(delivered=1)
    [request] = receiver.received()
    [row] = rows(db)
    assert request.path == "/hooks/opsgate"
    assert verify(SECRET.encode(), request.headers, request.body)
    assert not verify(b"another-secret-0123456789abcdefghij", request.headers, request.body)
    assert request.headers["webhook-id"] == row.event_id
    assert request.headers["webhook-timestamp"] == str(int(clock.now().timestamp()))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-request-id"] == f"unblock-{world.account(0)}"
    assert request.headers["traceparent"].startswith(f"00-{TRACE}-")
    assert request.json() == row.payload | {
        "links": {"console": f"https://ops.example.com/console/approvals/{approval_id}"}
    }
    assert (row.status, row.attempts, row.last_status, row.delivered_at) == (
        "delivered",
        1,
        200,
        clock.now(),
    )
    assert deliverer.deliver_due() == DeliveryReport()  # delivered once
    assert len(receiver.received()) == 1


def test_an_uncommitted_event_is_never_delivered(
    db: Database, clock: FrozenClock, receiver: Receiver, deliverers: list[Deliverer]
) -> None:
    configured = integrations(hook("audit_sink", receiver.url))
    with db.writing() as session:
        outbox.enqueue(
            session,
            configured,
            "approval.expired",
            {"approval": {"id": "apr_1"}},
            request_id="r",
            trace_id=None,
            now=clock.now(),
        )
        session.flush()
        session.rollback()
    assert make(deliverers, db, configured, clock).deliver_due() == DeliveryReport()
    assert receiver.received() == []


def test_a_whsec_secret_signs_with_its_decoded_key() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"id":"evt_1"}'
    expected = base64.b64encode(
        hmac.new(key, b"evt_1.1700000000." + body, hashlib.sha256).digest()
    ).decode()
    assert signature(secret, "evt_1", 1700000000, body) == f"v1,{expected}"


def test_a_failed_attempt_is_retried_after_a_backoff(
    services: Services,
    db: Database,
    world: World,
    clock: FrozenClock,
    receiver: Receiver,
    deliverers: list[Deliverer],
) -> None:
    configured = integrations(hook("audit_sink", receiver.url))
    deliverer = make(deliverers, db, configured, clock)
    request_unblock(with_integrations(services, configured), world, origin)
    receiver.answer(503)

    assert deliverer.deliver_due() == DeliveryReport(retrying=1)
    [row] = rows(db)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, 503)
    assert row.last_error == "HTTP 503: ok"
    assert row.locked_until is None
    wait = row.next_attempt_at - clock.now()
    assert timedelta(seconds=15) <= wait <= timedelta(seconds=30)

    clock.advance(wait - timedelta(seconds=1))
    assert deliverer.deliver_due() == DeliveryReport()  # not due yet
    clock.advance(timedelta(seconds=1))
    assert deliverer.deliver_due() == DeliveryReport(delivered=1)
    first, second = receiver.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert verify(SECRET.encode(), second.headers, second.body)
    assert rows(db)[0].attempts == 2


def test_backoff_doubles_with_jitter_up_to_an_hour() -> None:
    rng = random.Random(1)
    for attempts in range(1, 20):
        ceiling = min(MAX_DELAY, timedelta(seconds=30 * 2 ** (attempts - 1)))
        for _ in range(20):
            delay = retry_delay(attempts, rng)
            assert ceiling / 2 <= delay <= ceiling
    assert len({retry_delay(3, rng) for _ in range(10)}) == 10  # jittered


def test_an_event_is_dead_after_max_attempts_and_can_be_retried(
    db: Database,
    clock: FrozenClock,
    receiver: Receiver,
    deliverers: list[Deliverer],
) -> None:
    configured = integrations(hook("audit_sink", receiver.url, max_attempts=3))
    deliverer = make(deliverers, db, configured, clock)
    with db.writing() as session:
        outbox.enqueue(
            session,
            configured,
            "approval.expired",
            {"approval": {"id": "apr_1"}},
            request_id="r",
            trace_id=None,
            now=clock.now(),
        )
        session.commit()
    receiver.answer(500, 500, 500)
    reports = []
    for _ in range(4):
        reports.append(deliverer.deliver_due())
        clock.advance(MAX_DELAY)
    assert reports == [
        DeliveryReport(retrying=1),
        DeliveryReport(retrying=1),
        DeliveryReport(dead=1),
        DeliveryReport(),
    ]
    assert len(receiver.received()) == 3
    [row] = rows(db)
    assert (row.status, row.attempts, row.last_status) == ("dead", 3, 500)

    with db.writing() as session:
        retry_dead(session, row.id, clock.now())
        session.commit()
    with db.writing() as session, pytest.raises(NotDead):
        retry_dead(session, row.id, clock.now())
    assert deliverer.deliver_due() == DeliveryReport(delivered=1)
    assert rows(db)[0].status == "delivered"


def test_an_unreachable_receiver_never_blocks_the_action(
    services: Services,
    db: Database,
    world: World,
    clock: FrozenClock,
    deliverers: list[Deliverer],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/secret-path-token"
    configured = integrations(hook("audit_sink", url, timeout=2.0))
    notifying = with_integrations(services, configured)
    approval_id = request_unblock(notifying, world, origin)
    decided = notifying.approvals.decide(
        approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("ok")
    )
    assert decided.status == "succeeded"

    report = make(deliverers, db, configured, clock).deliver_due()
    assert report == DeliveryReport(retrying=3)
    for row in rows(db):
        assert row.status == "pending"
        assert row.last_status is None
        assert (row.last_error or "").startswith("ConnectError")
        assert "secret-path-token" not in (row.last_error or "")
        assert SECRET not in (row.last_error or "")


def test_a_removed_subscription_makes_its_events_dead(
    db: Database, clock: FrozenClock, receiver: Receiver, deliverers: list[Deliverer]
) -> None:
    with db.writing() as session:
        outbox.enqueue(
            session,
            integrations(hook("gone", receiver.url), hook("kept", receiver.url)),
            "approval.expired",
            {"approval": {"id": "apr_1"}},
            request_id="r",
            trace_id=None,
            now=clock.now(),
        )
        session.commit()
    deliverer = make(deliverers, db, integrations(hook("kept", receiver.url)), clock)
    assert deliverer.deliver_due() == DeliveryReport(delivered=1, dead=1)
    by_name = {row.subscription: row for row in rows(db)}
    assert by_name["gone"].status == "dead"
    assert by_name["gone"].last_error == "subscription 'gone' is no longer configured"
    assert by_name["kept"].status == "delivered"
    assert len(receiver.received()) == 1


def test_concurrent_deliverers_deliver_each_event_once(
    test_db: TestDatabase,
    db: Database,
    clock: FrozenClock,
    receiver: Receiver,
    deliverers: list[Deliverer],
) -> None:
    configured = integrations(hook("a", f"{receiver.url}/a"), hook("b", f"{receiver.url}/b"))
    writer = Database(test_db.url)
    with writer.writing() as session:
        for n in range(20):
            outbox.enqueue(
                session,
                configured,
                "approval.expired",
                {"approval": {"id": f"apr_{n}"}},
                request_id=f"r-{n}",
                trace_id=None,
                now=clock.now(),
            )
        session.commit()
    writer.dispose()

    databases = [Database(test_db.url) for _ in range(3)]
    workers = [make(deliverers, d, configured, clock) for d in databases]
    start = threading.Barrier(len(workers))
    reports: list[DeliveryReport] = []
    failures: list[BaseException] = []

    def work(deliverer: Deliverer) -> None:
        try:
            start.wait(10)
            reports.append(deliverer.deliver_due())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for database in databases:
        database.dispose()
    assert failures == []
    assert sum(r.delivered for r in reports) == 40
    received = Counter((r.path, r.json()["approval"]["id"]) for r in receiver.received())
    assert len(received) == 40
    assert set(received.values()) == {1}
    assert {row.status for row in rows(db)} == {"delivered"}


def test_a_slack_subscription_gets_a_readable_message(
    services: Services,
    db: Database,
    world: World,
    clock: FrozenClock,
    receiver: Receiver,
    deliverers: list[Deliverer],
) -> None:
    configured = integrations(hook("risk_slack", receiver.url, format="slack", secret=None))
    notifying = with_integrations(services, configured)
    approval_id = request_unblock(notifying, world, origin)
    make(deliverers, db, configured, clock, public_url="https://ops.example.com").deliver_due()
    [request] = receiver.received()
    assert "webhook-signature" not in request.headers  # no secret configured
    message = request.json()
    assert set(message) == {"text", "blocks"}
    account = world.account(0)
    assert message["text"] == (
        f"Approval requested: rita asks to run account.unblock on account:{account} "
        f"https://ops.example.com/console/approvals/{approval_id}"
    )
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["section", "section", "context", "actions"]
    fields = dict(f["text"].split("\n", 1) for f in message["blocks"][1]["fields"])
    assert fields["*Target*"] == f"account:{account}"
    assert fields["*Approvals*"] == "0 of 1"
    assert fields["*Reason*"] == "customer verified by phone"
    [button] = message["blocks"][3]["elements"]
    assert button["url"] == f"https://ops.example.com/console/approvals/{approval_id}"


def test_the_cli_lists_delivers_and_retries(
    test_db: TestDatabase,
    db: Database,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "integrations.toml"
    config.write_text(
        f'[webhooks.audit_sink]\nurl = "{receiver.url}"\nsecret_env = "OPSGATE_TEST_HOOK_SECRET"\n'
        "max_attempts = 1\n"
    )
    monkeypatch.setenv("OPSGATE_DATABASE_URL", test_db.url)
    monkeypatch.setenv("OPSGATE_INTEGRATIONS", str(config))
    monkeypatch.setenv("OPSGATE_TEST_HOOK_SECRET", SECRET)
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        configured = integrations(hook("audit_sink", receiver.url))
        with db.writing() as session:
            [row] = outbox.enqueue(
                session,
                configured,
                "approval.expired",
                {"approval": {"id": "apr_1"}},
                request_id="r",
                trace_id=None,
                now=datetime.now(UTC),
            )
            session.commit()
        receiver.answer(500)
        delivered = runner.invoke(cli, ["webhooks", "deliver", "--once"])
        assert delivered.exit_code == 0, delivered.output
        assert "0 delivered, 0 to retry, 1 dead" in delivered.output

        listed = runner.invoke(cli, ["webhooks", "list", "--status", "dead", "--json"])
        assert listed.exit_code == 0, listed.output
        [line] = [json.loads(x) for x in listed.stdout.splitlines() if x.startswith("{")]
        assert (line["id"], line["status"], line["last_error"]) == (row.id, "dead", "HTTP 500: ok")
        assert runner.invoke(cli, ["webhooks", "list", "--status", "lost"]).exit_code == 2

        retried = runner.invoke(cli, ["webhooks", "retry", row.id])
        assert retried.exit_code == 0, retried.output
        assert runner.invoke(cli, ["webhooks", "retry", row.id]).exit_code == 1  # not dead
        assert runner.invoke(cli, ["webhooks", "retry", "obx_nope"]).exit_code == 1
        again = runner.invoke(cli, ["webhooks", "deliver", "--once"])
        assert "1 delivered" in again.output
        assert rows(db)[0].status == "delivered"
        assert len(receiver.received()) == 2
        with db.reading() as session:
            [retry_record] = session.scalars(
                select(AuditRecord).where(AuditRecord.action == "webhooks.retry")
            ).all()
        assert retry_record.target == f"outbox_event:{row.id}"
        assert retry_record.actor_id is not None and retry_record.actor_id.startswith("cli:")

        # Delivered events past their retention go; younger ones stay.
        kept = runner.invoke(cli, ["webhooks", "prune", "--older-than", "1d"])
        assert kept.exit_code == 0, kept.output
        assert "0 delivered event(s) pruned" in kept.output
        assert len(rows(db)) == 1
        with db.writing() as session:
            session.execute(
                update(OutboxEvent).values(delivered_at=datetime.now(UTC) - timedelta(days=31))
            )
            session.commit()
        pruned = runner.invoke(cli, ["webhooks", "prune"])
        assert "1 delivered event(s) pruned" in pruned.output
        assert rows(db) == []
    finally:
        get_settings.cache_clear()
