"""A team adopts opsgate for its own service, end to end, with no edit to opsgate's source.

In a temporary directory outside this repository: a plugin package that ships only a policy
and a declarations file (no Python action), and a ticket service started here on a free port
that owns `ticket` records opsgate has no table for (tests/ticket_service.py; opsgate reaches
it only over HTTP). One user requests `ticket.close`, another approves, the service executes,
the audit record holds the service's before/after; a second request goes stale when the
ticket changes in the service before approval. Then the attacks on the remote read.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from opsgate.core.clock import FrozenClock
from opsgate.db.models import AuditRecord
from opsgate.plugins import BUILT_IN_POLICY
from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World
from tests.ticket_service import SECRET, TicketService, running

POLICY = """
[roles.support_agent]
description = "Support: closes tickets."

[roles.risk_reviewer]
description = "Reviews closures."

[actions."ticket.close"]
allow = ["support_agent"]

[actions."ticket.close".approval]
mode = "enforce"
approver_roles = ["risk_reviewer"]
expires_in = "24h"
tiers = [{ quorum = 1 }]
"""

DECLARATIONS = """
[backends.tickets]
url = "{url}"
secret_env = "TICKETDESK_SECRET"
connect_timeout_seconds = 0.5
timeout_seconds = 1.0
max_attempts = 1

[target_kinds.ticket]
backend = "tickets"
label = "Ticket"
fields = {{ version = "Version", status = "Status", subject = "Subject", email = "Email" }}
pii = ["email"]
title_field = "subject"
search = true

[actions."ticket.close"]
label = "Close a ticket"
description = "Close a customer's ticket with a resolution."
risk = "write"
target_kind = "ticket"
sensitive = ["note"]

[actions."ticket.close".payload_schema]
type = "object"
required = ["resolution"]
properties.resolution = {{ type = "string", enum = ["fixed", "wont_fix", "duplicate"] }}
properties.note = {{ type = "string", maxLength = 200 }}
"""

PLUGIN = '''
"""ticketdesk: the ticket service behind opsgate, declared, with no Python action."""
from pathlib import Path

from opsgate.plugin import Plugin

HERE = Path(__file__).parent
plugin = Plugin(
    name="ticketdesk",
    version="1.0.0",
    policy=HERE / "policy.toml",
    declarations=HERE / "declarations.toml",
)
'''


def write_plugin(root: Path, url: str) -> None:
    package = root / "ticketdesk"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    # opsgate's own administration policy, and the team's roles and action.
    (package / "policy.toml").write_text(BUILT_IN_POLICY.read_text() + POLICY)
    (package / "declarations.toml").write_text(DECLARATIONS.format(url=url))


@pytest.fixture
def service() -> Iterator[TicketService]:
    tickets = {
        f"tkt_{n}": {"version": 1, "status": "open", "subject": f"Card declined {n}",
                     "email": f"customer{n}@example.com"}
        for n in (1, 2, 3)
    }  # fmt: skip
    with running(TicketService(tickets=tickets)) as started:
        yield started


@pytest.fixture
def adopted(
    test_db: TestDatabase,
    service: TicketService,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    clock: FrozenClock,
) -> Iterator[tuple[TestClient, Services]]:
    root = tmp_path_factory.mktemp("adopter")
    assert not root.resolve().is_relative_to(Path(__file__).resolve().parents[1])
    write_plugin(root, service.url)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "ticketdesk", raising=False)  # an earlier test's copy
    monkeypatch.setenv("TICKETDESK_SECRET", SECRET)
    settings = Settings(database_url=test_db.url, plugins="ticketdesk:plugin")
    services = Services.build(settings, clock=clock)
    app = create_app(settings, services, configure_logs=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, services
    services.db.dispose()


def request_close(client: TestClient, world: World, ticket: str, **payload: Any) -> Any:
    return client.post(
        "/api/v1/actions/ticket.close",
        json={
            "target": f"ticket:{ticket}",
            "payload": payload or {"resolution": "fixed", "note": "refund issued"},
            "reason": "customer confirmed",
        },
        headers=world.auth("alice"),
    )


def audit(services: Services, request_id: str) -> list[AuditRecord]:
    with services.db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.request_id == request_id)
                .order_by(AuditRecord.seq)
            )
        )


def test_request_approve_execute_in_the_service_and_audit_its_change(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, services = adopted
    asked = request_close(client, world, "tkt_1")
    assert asked.status_code == 202, asked.text
    approval_id = asked.json()["approval_id"]
    request_id = asked.json()["request_id"]
    read = service.seen[-1]
    assert read["path"] == "/v1/targets/ticket/tkt_1"
    assert read["headers"]["X-Request-ID"] == request_id
    assert read["headers"]["traceparent"].startswith("00-")

    detail = client.get(f"/api/v1/approvals/{approval_id}", headers=world.auth("rita")).json()
    assert detail["target_snapshot"]["version"] == 1
    assert (detail["target_current"]["version"], detail["target_changed"]) == (1, False)
    assert detail["proposed_change"] == {
        "before": {},
        "after": {"resolution": "fixed", "note": "refund issued"},
    }
    approved = client.post(
        f"/api/v1/approvals/{approval_id}/approve", json={}, headers=world.auth("rita")
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "succeeded"
    assert approved.json()["result"] == {"ticket": "tkt_1", "status": "closed"}
    assert service.tickets["tkt_1"]["status"] == "closed"
    call = service.seen[-1]
    assert call["path"] == "/v1/actions/ticket.close"
    assert call["body"]["target_version"] == 1
    assert call["body"]["approval_id"] == approval_id

    records = audit(services, request_id)
    assert [r.result for r in records] == ["approval_requested", "succeeded"]
    executed = records[-1]
    assert executed.before == {"status": "open", "version": 1}
    assert executed.after == {"status": "closed", "version": 2}
    assert executed.parameters == {"resolution": "fixed", "note": "[redacted]"}
    assert executed.actor_id == world.user_ids["alice"]


def test_a_change_in_the_service_before_approval_makes_the_request_stale(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, services = adopted
    asked = request_close(client, world, "tkt_2")
    assert asked.status_code == 202, asked.text
    service.change("tkt_2", subject="Card declined twice")
    detail = client.get(
        f"/api/v1/approvals/{asked.json()['approval_id']}", headers=world.auth("rita")
    ).json()
    assert (detail["target_current"]["version"], detail["target_changed"]) == (2, True)
    approved = client.post(
        f"/api/v1/approvals/{asked.json()['approval_id']}/approve",
        json={},
        headers=world.auth("rita"),
    )
    assert approved.status_code == 409, approved.text
    assert approved.json()["code"] == "stale_approval"
    assert service.tickets["tkt_2"]["status"] == "open"
    assert not [s for s in service.seen if s["method"] == "POST"]
    stale = audit(services, asked.json()["request_id"])[-1]
    assert (stale.result, stale.error_code) == ("stale", "stale_approval")


def test_a_payload_outside_the_schema_is_refused_and_audited(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, services = adopted
    refused = request_close(client, world, "tkt_1", resolution="deleted", color="red")
    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == "invalid_payload"
    assert body["request_id"] == refused.headers["x-request-id"]
    places = sorted(tuple(e["loc"]) for e in body["errors"])
    assert places == [("body", "payload"), ("body", "payload", "resolution")]
    assert "deleted" not in refused.text
    record = audit(services, body["request_id"])[-1]
    assert (record.result, record.error_code) == ("invalid", "invalid_payload")
    assert service.seen == []


@pytest.mark.parametrize("mode", ["unsigned", "forged", "reflect"])
def test_a_read_answer_not_bound_to_its_request_is_not_believed(
    adopted: tuple[TestClient, Services], world: World, service: TicketService, mode: str
) -> None:
    client, services = adopted
    service.mode = mode
    refused = request_close(client, world, "tkt_1")
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert body["code"] == "target_unavailable"
    assert body["request_id"] == refused.headers["x-request-id"]
    assert "not verified" in body["detail"]
    record = audit(services, body["request_id"])[-1]
    assert (record.result, record.error_code) == ("failed", "target_unavailable")
    with services.db.reading() as session:
        requested = select(AuditRecord).where(AuditRecord.result == "approval_requested")
        assert session.scalars(requested).first() is None


def test_an_answer_captured_for_another_read_is_not_believed(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, _ = adopted
    service.mode = "capture"
    assert request_close(client, world, "tkt_1").status_code == 202
    service.mode = "replay"
    refused = request_close(client, world, "tkt_1")
    assert refused.status_code == 503
    assert refused.json()["code"] == "target_unavailable"


def test_an_unknown_ticket_is_target_not_found(
    adopted: tuple[TestClient, Services], world: World
) -> None:
    client, _ = adopted
    refused = request_close(client, world, "tkt_404")
    assert refused.status_code == 404
    assert refused.json()["code"] == "target_not_found"


def test_a_service_down_or_slow_is_target_unavailable_and_nothing_is_done(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, services = adopted
    asked = request_close(client, world, "tkt_3")
    assert asked.status_code == 202
    service.mode = "slow"
    slow = client.post(
        f"/api/v1/approvals/{asked.json()['approval_id']}/approve",
        json={},
        headers=world.auth("rita"),
    )
    assert slow.status_code == 503, slow.text
    assert slow.json()["code"] == "target_unavailable"
    detail = client.get(
        f"/api/v1/approvals/{asked.json()['approval_id']}", headers=world.auth("rita")
    ).json()
    assert detail["status"] == "pending"
    assert detail["decisions"] == []
    service.stop()
    down = request_close(client, world, "tkt_3")
    assert down.status_code == 503
    assert down.json()["code"] == "target_unavailable"
    assert audit(services, down.json()["request_id"])[-1].error_code == "target_unavailable"
    assert service.tickets["tkt_3"]["status"] == "open"


def test_a_change_between_the_read_and_the_call_is_refused_by_the_service(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, services = adopted
    asked = request_close(client, world, "tkt_1")
    assert asked.status_code == 202
    service.mode = "race"
    approved = client.post(
        f"/api/v1/approvals/{asked.json()['approval_id']}/approve",
        json={},
        headers=world.auth("rita"),
    )
    assert approved.status_code == 409, approved.text
    assert approved.json()["code"] == "backend_rejected"
    assert service.seen[-1]["body"]["target_version"] == 1
    assert service.tickets["tkt_1"]["status"] == "open"
    failed = audit(services, asked.json()["request_id"])[-1]
    assert (failed.result, failed.error_code) == ("failed", "backend_rejected:version_conflict")


def test_no_write_transaction_is_open_while_the_service_is_read(
    adopted: tuple[TestClient, Services],
    world: World,
    service: TicketService,
    test_db: TestDatabase,
) -> None:
    client, services = adopted
    free: list[bool] = []
    service.on_read = lambda: free.append(no_writer_holds(test_db, services))
    asked = request_close(client, world, "tkt_1")
    assert asked.status_code == 202
    approved = client.post(
        f"/api/v1/approvals/{asked.json()['approval_id']}/approve",
        json={},
        headers=world.auth("rita"),
    )
    assert approved.status_code == 200, approved.text
    assert len(free) >= 2 and all(free), free


def no_writer_holds(test_db: TestDatabase, services: Services) -> bool:
    """SQLite: the writer lock can be taken at once. PostgreSQL: no other session of this
    database sits idle inside a transaction (as one waiting on HTTP would)."""
    if test_db.backend == "sqlite":
        conn = sqlite3.connect(test_db.url.removeprefix("sqlite:///"), timeout=0.2)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    )
    with services.db.reading() as session:
        return session.scalar(waiting) == 0


def test_a_repeated_idempotency_key_replays_the_first_answer(
    adopted: tuple[TestClient, Services], world: World, service: TicketService
) -> None:
    client, _ = adopted
    body = {"target": "ticket:tkt_1", "payload": {"resolution": "fixed"}, "reason": "done"}
    headers = world.auth("alice") | {"Idempotency-Key": "close-tkt-1"}
    first = client.post("/api/v1/actions/ticket.close", json=body, headers=headers)
    again = client.post("/api/v1/actions/ticket.close", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["approval_id"] == first.json()["approval_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    reads = [s for s in service.seen if s["path"].startswith("/v1/targets/")]
    assert len(reads) == 1  # the replay needed no read
