"""The app delivers webhook events from a background thread while it runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.db.engine import Database
from opsgate.db.models import OutboxEvent
from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from tests.conftest import World
from tests.webhook_receiver import Receiver, hook, integrations, running_receiver, with_integrations


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def delivery_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "opsgate-webhooks" and t.is_alive()]


def request_unblock(client: TestClient, world: World) -> str:
    target = f"account:{world.account(0)}"
    blocked = client.post(
        "/api/v1/actions/account.block",
        headers=world.auth("alice"),
        json={"target": target, "payload": {"reason_code": "fraud_suspected"}, "reason": "odd"},
    )
    assert blocked.status_code == 200, blocked.text
    held = client.post(
        "/api/v1/actions/account.unblock",
        headers=world.auth("rita") | {"X-Request-ID": "req-unblock-webhook"},
        json={"target": target, "payload": {}, "reason": "customer verified by phone"},
    )
    assert held.status_code == 202, held.text
    assert held.json()["request_id"] == held.headers["x-request-id"]
    return str(held.json()["approval_id"])


def test_the_app_delivers_events_in_the_background_and_stops_with_it(
    settings: Settings, services: Services, world: World, receiver: Receiver
) -> None:
    notifying = with_integrations(services, integrations(hook("audit_sink", receiver.url)))
    app = create_app(settings, notifying, configure_logs=False)
    with TestClient(app) as client:
        assert len(delivery_threads()) == 1
        approval_id = request_unblock(client, world)
        [request] = receiver.wait_for(1)
        assert request.json()["approval"]["id"] == approval_id
        # The event names opsgate's request ID, never the caller's own X-Request-ID.
        assert request.headers["x-request-id"] == request.json()["request_id"]
        assert request.headers["x-request-id"] != "req-unblock-webhook"
    assert delivery_threads() == []


def test_the_in_process_deliverer_can_be_switched_off(
    settings: Settings, services: Services, world: World, db: Database, receiver: Receiver
) -> None:
    off = settings.model_copy(update={"webhook_delivery": False})
    notifying = with_integrations(services, integrations(hook("audit_sink", receiver.url)))
    with TestClient(create_app(off, notifying, configure_logs=False)) as client:
        assert delivery_threads() == []
        request_unblock(client, world)
    with db.reading() as session:
        [row] = session.scalars(select(OutboxEvent)).all()
    assert (row.status, row.attempts) == ("pending", 0)  # queued for `opsgate webhooks deliver`
    assert receiver.received() == []
