"""Hostile stand-ins for the ledger: an answer counts only when it is bound to its own request.

Each test puts an HTTP server between opsgate's real backend client and the real ledger
service (in-process, on its own database): a reflector that echoes the signed request back
as the answer, a replayer that returns a genuine signed answer captured for another request,
and a replayer of reconciliation lookups. Whatever they send, the outcome stays `unknown`
(to be reconciled) and no `succeeded` record is written for an effect that never happened.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opsgate.core.errors import BackendTimeout
from opsgate.core.integrations.backends import BackendClient
from opsgate.core.integrations.config import Backend
from opsgate.core.integrations.reconcile import reconcile
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord, BackendCall
from opsgate.web.services import Services
from opsgate_demo.ledger_service.app import create_app
from opsgate_demo.ledger_service.settings import LedgerSettings
from opsgate_demo.models import Payment
from tests.conftest import FrozenClock, World
from tests.core.test_remote_actions import remote_services, reverse
from tests.ledger_service import conftest as ledger_fixtures
from tests.ledger_service.conftest import SECRET, reversible_payment

# The ledger service's own database, initialised from the test's (both backends).
ledger_url = ledger_fixtures.ledger_url
ledger_db = ledger_fixtures.ledger_db

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "date", "server"}


@dataclass(frozen=True)
class Exchange:
    """One request the stand-in received and the answer it got from the real ledger."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    answer_headers: dict[str, str] = field(default_factory=dict)
    answer_body: bytes = b""


class StandIn:
    """An HTTP server where opsgate expects the ledger. `mode` says what it does:

    - `forward`: pass the request to the real ledger and its answer back (and keep both);
    - `reflect`: answer with the request itself (its status 200, body and signature headers);
    - `replay`: answer with the first exchange forwarded, whatever is asked, without
      passing anything on;
    - `swallow`: keep the request without passing it on, and answer an unsigned 504;
    - `replay_lookup`: forward actions; answer lookups with the first lookup's answer.
    """

    def __init__(self, ledger_app: Any) -> None:
        self.ledger_app = ledger_app
        self.ledger = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ledger_app), base_url="http://ledger"
        )
        self.url = ""
        self.mode = "forward"
        self.exchanges: list[Exchange] = []
        self.swallowed: list[Exchange] = []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        seen = Exchange(
            request.method,
            request.scope["raw_path"].decode(),
            dict(request.headers),
            await request.body(),
        )
        if self.mode == "reflect":
            echoed = {k: v for k, v in seen.headers.items() if k.startswith("x-opsgate-")}
            return Response(seen.body, 200, echoed | {"content-type": "application/json"})
        if self.mode == "swallow" and seen.method == "POST":
            self.swallowed.append(seen)
            return Response(b"gateway timeout", 504)
        captured = [e for e in self.exchanges if e.method == seen.method]
        replaying = self.mode == "replay" or (self.mode == "replay_lookup" and seen.method == "GET")
        if replaying and captured:
            first = captured[0]
            return Response(first.answer_body, first.status, first.answer_headers)
        done = await self.forward(seen)
        return Response(done.answer_body, done.status, done.answer_headers)

    async def forward(self, seen: Exchange) -> Exchange:
        headers = {k: v for k, v in seen.headers.items() if k not in {"host", "content-length"}}
        answer = await self.ledger.request(
            seen.method, seen.path, content=seen.body, headers=headers
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        done = Exchange(
            seen.method,
            seen.path,
            seen.headers,
            seen.body,
            answer.status_code,
            kept,
            answer.content,
        )
        self.exchanges.append(done)
        return done

    def deliver_swallowed(self) -> httpx.Response:
        """Deliver the swallowed request to the real ledger now (a request late in transit)."""
        (late,) = self.swallowed
        headers = {k: v for k, v in late.headers.items() if k not in {"host", "content-length"}}
        with TestClient(self.ledger_app, base_url="http://ledger") as client:
            return client.request(late.method, late.path, content=late.body, headers=headers)


@pytest.fixture
def stand_in(ledger_url: str) -> Iterator[StandIn]:
    ledger_app = create_app(
        LedgerSettings(database_url=ledger_url, secret=SecretStr(SECRET)), configure_logs=False
    )
    server = StandIn(ledger_app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(server.app(), log_level="critical", lifespan="off", access_log=False)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.02)
    yield server
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def remote(services: Services, stand_in: StandIn) -> Iterator[Services]:
    backend = Backend(
        name="ledger",
        url=stand_in.url,
        actions=frozenset({"payment.reverse", "account.adjust_balance"}),
        secret=SECRET,
        connect_timeout=1.0,
        timeout=5.0,
        max_attempts=1,
    )
    with BackendClient() as client:
        yield remote_services(services, client, backend)  # type: ignore[arg-type]


def results(db: Database, request_id: str) -> list[str]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord.result)
                .where(
                    AuditRecord.request_id == request_id, AuditRecord.action == "payment.reverse"
                )
                .order_by(AuditRecord.seq)
            )
        )


def call_status(db: Database, request_id: str) -> str:
    with db.reading() as session:
        return session.scalars(
            select(BackendCall.status).where(BackendCall.request_id == request_id)
        ).one()


def reversed_minor(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        return payment.reversed_minor


def test_a_reflected_request_is_no_answer_and_the_outcome_stays_unknown(
    remote: Services, stand_in: StandIn, db: Database, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    stand_in.mode = "reflect"

    with pytest.raises(BackendTimeout) as caught:
        reverse(remote, world, payment.id, 100, "key-reflect", "req-reflect")

    assert caught.value.extra["outcome"] == "unknown"
    assert results(db, "req-reflect") == ["unknown"]
    assert call_status(db, "req-reflect") == "unknown"
    assert reversed_minor(db, payment.id) == payment.reversed_minor
    assert reversed_minor(ledger_db, payment.id) == payment.reversed_minor


def test_a_genuine_answer_replayed_for_another_request_is_refused(
    remote: Services, stand_in: StandIn, db: Database, ledger_db: Database, world: World
) -> None:
    first, second = reversible_payment(ledger_db, 0), reversible_payment(ledger_db, 1)
    genuine = reverse(remote, world, first.id, 100, "key-first", "req-first")
    assert genuine.status == "succeeded"
    stand_in.mode = "replay"

    with pytest.raises(BackendTimeout):
        reverse(remote, world, second.id, 100, "key-second", "req-second")

    assert results(db, "req-second") == ["unknown"]
    assert call_status(db, "req-second") == "unknown"
    # The replayed answer names the first payment: nothing of it reaches the second.
    assert reversed_minor(db, second.id) == second.reversed_minor
    assert reversed_minor(ledger_db, second.id) == second.reversed_minor
    assert reversed_minor(db, first.id) == first.reversed_minor + 100


def test_a_replayed_lookup_answer_cannot_settle_a_call(
    remote: Services,
    stand_in: StandIn,
    db: Database,
    ledger_db: Database,
    world: World,
    clock: FrozenClock,
) -> None:
    payment = reversible_payment(ledger_db)
    stand_in.mode = "swallow"
    with pytest.raises(BackendTimeout):
        reverse(remote, world, payment.id, 100, "key-late", "req-late")
    stand_in.mode = "replay_lookup"
    (early,) = reconcile(remote.gateway)  # the ledger genuinely never saw it (yet)
    assert (early.status, early.settled) == ("unknown", False)

    # The request arrives late, still within its signature window, and runs.
    assert stand_in.deliver_swallowed().status_code == 200
    assert reversed_minor(ledger_db, payment.id) == payment.reversed_minor + 100
    clock.advance(timedelta(minutes=7))
    (late,) = reconcile(remote.gateway)  # answered with the first lookup's "never seen"

    assert (late.status, late.settled) == ("unknown", False)
    assert call_status(db, "req-late") == "unknown"
    assert results(db, "req-late") == ["unknown"]
