"""A plugin's own kind of record, with no table: an in-memory search provider and record view
(defined here, through `opsgate.plugin` only) show up in `/api/v1/search`, the console search
and the generic record pages, contact details masked until an audited reveal."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from opsgate.plugin import (
    ActionContext,
    ActionSpec,
    Outcome,
    Payload,
    Plugin,
    ReadContext,
    Record,
    RecordField,
    RecordView,
    RiskClass,
    SearchHit,
    SearchResults,
    TargetKind,
    mask_email,
)
from opsgate.settings import Settings
from opsgate.web.services import Services
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase, World
from tests.web.console.conftest import Browser, audit_rows

EMAIL = "dana.contact@example.org"
TICKETS: dict[str, dict[str, Any]] = {
    "tkt_1": {"subject": "Statement not arriving", "status": "open", "email": EMAIL, "version": 3},
    "tkt_2": {"subject": "Statement follow-up", "status": "closed", "email": EMAIL, "version": 1},
}


class TicketSearch:
    name: str = "tickets"
    kinds: Sequence[str] = ("ticket",)

    def search(self, ctx: ReadContext, query: str, limit: int) -> SearchResults:
        term = query.strip().lower()
        hits = [
            SearchHit(
                "ticket",
                ident,
                t["subject"],
                {"id": ident, "status": t["status"], "contact": mask_email(t["email"])},
                detail=t["status"],
            )
            for ident, t in TICKETS.items()
            if term in t["subject"].lower()
        ]
        return SearchResults(hits[:limit], term_kind="subject", term=term)


def read_ticket(ctx: ReadContext, ident: str) -> Record | None:
    t = TICKETS.get(ident)
    if t is None:
        return None
    contact = t["email"] if ctx.reveal_pii else mask_email(t["email"])
    fields = [
        RecordField("subject", "Subject", t["subject"]),
        RecordField("status", "Status", t["status"]),
        RecordField("contact", "Contact email", contact, pii=True),
    ]
    other = "tkt_2" if ident == "tkt_1" else "tkt_1"
    history = [{"When": "2026-12-01", "What": "opened"}, {"When": "2026-12-02", "What": "replied"}]
    return Record(
        "ticket",
        ident,
        f"Ticket: {t['subject']}",
        fields,
        {f"ticket:{other}": "Linked ticket"},
        {"History": history},
    )


class NoPayload(Payload):
    pass


def view_contact(ctx: ActionContext, ticket: dict[str, Any], payload: NoPayload) -> Outcome:
    return Outcome({"contact": ticket["email"]}, audit={"revealed_fields": ["contact"]})


def plugin() -> Plugin:
    return Plugin(
        name="tickets",
        target_kinds=(
            TargetKind(
                "ticket",
                lambda session, ident, lock: (
                    {"id": ident, **TICKETS[ident]} if ident in TICKETS else None
                ),
                lambda t: {"id": t["id"], "status": t["status"], "version": t["version"]},
                frozenset({"id", "status", "version"}),
            ),
        ),
        actions=(
            ActionSpec(
                "ticket.view_contact",
                "Reveal the contact",
                "Show the ticket's contact email in full. Audited.",
                RiskClass.READ,
                "ticket",
                NoPayload,
                view_contact,
            ),
        ),
        search=(TicketSearch(),),
        views=(RecordView("ticket", read_ticket, reveal="ticket.view_contact"),),
    )


@pytest.fixture
def settings(test_db: TestDatabase, tmp_path: Path) -> Settings:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        DEMO_POLICY.read_text()
        + '\n[actions."ticket.view_contact"]\nallow = ["support_agent", "risk_reviewer"]\n'
    )
    return Settings(
        database_url=test_db.url,
        policy=policy,
        plugins=f"demo,{__name__}:plugin",
    )


def api(client: TestClient, world: World, path: str, **params: Any) -> httpx.Response:
    return client.get(f"/api/v1{path}", params=params, headers=world.auth("alice"))


def test_the_plugins_search_answers_through_the_api_masked_and_audited(
    client: TestClient, world: World, services: Services
) -> None:
    found = api(client, world, "/search", q="statement")
    assert found.status_code == 200, found.text
    body = found.json()
    assert [(h["target"], h["page"]) for h in body["hits"]] == [
        ("ticket:tkt_1", "/console/records/ticket/tkt_1"),
        ("ticket:tkt_2", "/console/records/ticket/tkt_2"),
    ]
    assert [row["id"] for row in body["ticket"]] == ["tkt_1", "tkt_2"]
    assert body["customers"] == [] and body["total"] == 2
    assert EMAIL not in found.text
    [audited] = audit_rows(services, action="records.search")
    assert audited.parameters["found"]["ticket"] == 2
    assert audited.parameters["term"]["kind"] == "subject"
    assert "statement" not in json.dumps(audited.parameters)


def test_the_plugins_record_reads_generically_masked_and_audited(
    client: TestClient, world: World, services: Services
) -> None:
    read = api(client, world, "/records/ticket/tkt_1")
    assert read.status_code == 200, read.text
    body = read.json()
    assert body["title"] == "Ticket: Statement not arriving"
    contact = next(f for f in body["fields"] if f["name"] == "contact")
    assert (contact["pii"], contact["value"]) == (True, mask_email(EMAIL))
    assert EMAIL not in read.text
    assert body["related"] == [
        {
            "target": "ticket:tkt_2",
            "label": "Linked ticket",
            "page": "/console/records/ticket/tkt_2",
        }
    ]
    assert body["sections"]["History"][1] == {"When": "2026-12-02", "What": "replied"}
    [audited] = audit_rows(services, action="records.read")
    assert (audited.target, audited.request_id) == ("ticket:tkt_1", body["request_id"])


def test_the_api_reveals_only_through_the_audited_action(
    client: TestClient, world: World, services: Services
) -> None:
    path = "/api/v1/records/ticket/tkt_1/reveal"
    assert client.get(path, headers=world.auth("alice")).status_code == 405  # never a GET
    refused = client.post(path, json={"reason": "curious"}, headers=world.auth("audrey"))
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    no_reason = client.post(path, json={}, headers=world.auth("alice"))
    assert no_reason.status_code == 422, no_reason.text
    assert EMAIL not in refused.text + no_reason.text
    revealed = client.post(path, json={"reason": "customer called"}, headers=world.auth("alice"))
    assert revealed.status_code == 200, revealed.text
    assert revealed.headers["cache-control"] == "no-store"
    body = revealed.json()
    assert body["revealed"] is True
    assert next(f["value"] for f in body["fields"] if f["name"] == "contact") == EMAIL
    results = [r.result for r in audit_rows(services, action="ticket.view_contact")]
    assert sorted(results) == ["denied", "invalid", "succeeded"]
    assert EMAIL not in json.dumps([str(r.outcome) for r in audit_rows(services)])


@pytest.mark.parametrize("path", ["/records/ticket/tkt_404", "/records/parcel/p1"])
def test_an_unknown_kind_or_id_is_a_404_problem_with_the_request_id(
    client: TestClient, world: World, path: str
) -> None:
    missing = api(client, world, path)
    assert missing.status_code == 404
    problem = missing.json()
    assert problem["code"] == "not_found"
    assert problem["request_id"] == missing.headers["x-request-id"]


def test_the_console_finds_and_shows_it_masked_until_an_audited_reveal(
    services: Services, browser: Callable[..., Browser]
) -> None:
    b = browser("alice")  # support_agent: may reveal
    home = b.get("/console").text
    assert "Find a customer, account, payment or ticket" in home  # every provider's kinds
    results = b.post("/console/search", {"q": "not arriving"})
    assert results.status_code == 200
    assert 'href="/console/records/ticket/tkt_1"' in results.text
    assert "tkt_2" not in results.text
    page = b.get("/console/records/ticket/tkt_1")
    assert page.status_code == 200, page.text
    assert (
        "Statement not arriving" in page.text
        and 'href="/console/records/ticket/tkt_2"' in page.text
    )
    assert EMAIL not in page.text and mask_email(EMAIL) in page.text
    assert "Reveal personal data" in page.text
    assert b.get("/console/records/ticket/tkt_1/reveal").status_code == 405  # never a GET
    revealed = b.post("/console/records/ticket/tkt_1/reveal", {"reason": "customer called"})
    assert revealed.status_code == 200, revealed.text
    assert EMAIL in revealed.text
    [done] = audit_rows(services, action="ticket.view_contact", result="succeeded")
    assert (done.target, done.reason) == ("ticket:tkt_1", "customer called")
    assert EMAIL not in str(done.outcome)
    assert EMAIL not in b.get("/console/records/ticket/tkt_1").text  # masked again
    reads = audit_rows(services, action="records.read")
    assert [r.target for r in reads] == ["ticket:tkt_1", "ticket:tkt_1"]


def test_a_reveal_without_the_role_or_a_reason_is_refused_and_audited(
    services: Services, browser: Callable[..., Browser]
) -> None:
    audrey = browser("audrey")  # auditor: may read records, may not reveal
    assert "Reveal personal data" not in audrey.get("/console/records/ticket/tkt_1").text
    forged = audrey.post("/console/records/ticket/tkt_1/reveal", {"reason": "curious"})
    assert forged.status_code == 403
    assert EMAIL not in forged.text
    no_reason = browser("alice").post("/console/records/ticket/tkt_1/reveal", {"reason": ""})
    assert no_reason.status_code == 422 and EMAIL not in no_reason.text
    results = [r.result for r in audit_rows(services, action="ticket.view_contact")]
    assert sorted(results) == ["denied", "invalid"]


def test_an_unknown_record_is_a_console_error_page_with_the_request_id(
    browser: Callable[..., Browser],
) -> None:
    b = browser("alice")
    for path in ("/console/records/ticket/tkt_404", "/console/records/parcel/p1"):
        missing = b.get(path)
        assert missing.status_code == 404
        assert missing.headers["x-request-id"] in missing.text
        assert "exists" in missing.text or "shown here" in missing.text
