"""A real HTTP server that receives webhooks in tests: it records every request and answers
with the status codes it is told to (200 by default)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opsgate.core.actions.gateway import Gateway
from opsgate.core.approvals.gate import Approvals
from opsgate.core.identity.actors import Actor
from opsgate.core.integrations.config import Integrations, Webhook
from opsgate.web.services import Services
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World

SECRET = "test-webhook-secret-0123456789abcdef"
ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}
ALL_EVENTS = frozenset(
    {"approval.requested", "approval.decided", "approval.executed", "approval.expired"}
)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records requests; `answer(503, 503)` makes the next two fail."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.lock = threading.Lock()
        self.url = ""

    def answer(self, *statuses: int) -> None:
        with self.lock:
            self.statuses.extend(statuses)

    def record(self, received: Received) -> int:
        with self.lock:
            self.requests.append(received)
            return self.statuses.popleft() if self.statuses else 200

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Poll until `count` requests arrived (or the deadline passed); return them all."""
        deadline = time.monotonic() + timeout
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received()


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.record(Received(self.path, headers, body))
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/opsgate"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def hook(name: str, url: str, **fields: Any) -> Webhook:
    fields.setdefault("events", ALL_EVENTS)
    fields.setdefault("secret", SECRET)
    return Webhook(name=name, url=url, **fields)


def integrations(*hooks: Webhook) -> Integrations:
    return Integrations(webhooks={h.name: h for h in hooks})


def with_integrations(services: Services, configured: Integrations) -> Services:
    """The same database, policy and clock as `services`, notifying `configured`."""
    gateway = Gateway(
        services.db,
        services.registry,
        services.policy,
        services.clock,
        services.gateway.idempotency,
        integrations=configured,
    )
    return replace(services, gateway=gateway, approvals=Approvals(gateway), integrations=configured)


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def request_unblock(
    services: Services,
    world: World,
    origin_for: Callable[[str], Any],
    n: int = 0,
    reason: str = "customer verified by phone",
) -> str:
    """Block account `n` (no approval needed) and ask, as rita, to unblock it."""
    account = world.account(n)
    services.gateway.submit(
        actor(world, "alice"),
        "account.block",
        {
            "target": f"account:{account}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "suspicious",
        },
        origin_for(f"block-{account}"),
    )
    result = services.gateway.submit(
        actor(world, "rita"),
        "account.unblock",
        {"target": f"account:{account}", "payload": {}, "reason": reason},
        origin_for(f"unblock-{account}"),
    )
    assert result.status == "pending_approval"
    approval_id = result.approval_id
    assert approval_id is not None
    return approval_id
