"""The audit log (filters, pages, CSV export, reads recorded) and the approval metrics chart."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable

from fastapi.testclient import TestClient

from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows, key_of


def add_notes(b: Browser, world: World, count: int) -> None:
    for n in range(count):
        page = b.get(f"/console/customers/{world.customer()}")
        b.post(
            "/console/actions/customer.add_note",
            {
                "target": f"customer:{world.customer()}",
                "payload.text": f"note {n}",
                "reason": f"ticket {n}",
                "idempotency_key": key_of(page.text),
            },
        )


def test_audit_log_filters_pages_and_records_the_read(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    add_notes(browser("alice"), world, 3)
    audrey = browser("audrey")
    page = audrey.get(
        "/console/audit",
        params={"action": "customer.add_note", "actor": world.user_ids["alice"]},
    )
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.text.count("<td>customer.add_note</td>") == 3
    assert "3 records, newest first" in page.text
    [read] = audit_rows(services, action="audit.read")
    assert read.parameters is not None
    assert read.parameters["action"] == "customer.add_note"
    assert read.parameters["returned"] == 3
    first = audrey.get("/console/audit", params={"action": "customer.add_note", "limit": 2})
    assert first.text.count("<td>customer.add_note</td>") == 2
    older = re.search(r'href="(/console/audit\?[^"]+)" rel="next"', first.text)
    assert older is not None
    second = audrey.get(html.unescape(older.group(1)))
    assert second.text.count("<td>customer.add_note</td>") == 1
    assert 'rel="next"' not in second.text


def test_audit_csv_export_is_complete_and_recorded(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    add_notes(browser("alice"), world, 2)
    response = browser("rita").get(
        "/console/audit/export.csv", params={"action": "customer.add_note"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["reason"] for r in rows] == ["ticket 0", "ticket 1"]  # oldest first
    [export] = audit_rows(services, action="audit.export")
    assert export.parameters is not None and export.parameters["records"] == 2


def test_the_audit_log_needs_audit_read(
    browser: Callable[..., Browser], services: Services
) -> None:
    alice = browser("alice")
    assert "Audit log" not in alice.get("/console").text
    for path in ("/console/audit", "/console/audit/export.csv", "/console/metrics"):
        refused = alice.get(path)
        assert refused.status_code == 403, path
        assert "Your roles do not include audit.read." in refused.text
    assert len(audit_rows(services, action="audit.read", result="denied")) == 3


def test_bad_filters_are_said_plainly(browser: Callable[..., Browser]) -> None:
    page = browser("audrey").get("/console/audit", params={"since": "yesterday"})
    assert page.status_code == 422
    assert "is not a date (YYYY-MM-DD)" in page.text
    bad_cursor = browser("audrey").get("/console/audit", params={"cursor": "nonsense"})
    assert bad_cursor.status_code == 422
    assert "The cursor is not one this API issued." in bad_cursor.text


def test_metrics_draw_volumes_and_time_to_decision(
    browser: Callable[..., Browser], world: World
) -> None:
    from tests.web.console.test_approvals import request_unblock

    approval_id = request_unblock(browser, world)
    browser("olga").post(f"/console/approvals/{approval_id}/decide", {"decision": "approve"})
    page = browser("audrey").get("/console/metrics")
    assert page.status_code == 200
    assert page.text.count('<svg class="chart"') == 2
    assert 'role="img"' in page.text
    assert "<title>account.unblock: Approved 1</title>" in page.text
    assert '<th scope="row">account.unblock</th>' in page.text
    empty = browser("audrey").get("/console/metrics", params={"days": 1})
    assert empty.status_code == 200


def test_the_audit_log_shows_a_callers_own_request_id_beside_opsgates(
    browser: Callable[..., Browser], client: TestClient, world: World
) -> None:
    sent = client.post(
        "/api/v1/actions/customer.add_note",
        headers=world.auth("alice") | {"X-Request-ID": "ticket-4711"},
        json={"target": f"customer:{world.customer()}", "payload": {"text": "t"}, "reason": "r"},
    )
    assert sent.status_code == 200, sent.text
    request_id = sent.headers["x-request-id"]
    page = browser("audrey").get("/console/audit", params={"request_id": request_id})
    assert page.status_code == 200
    cell = re.search(rf"<code>{request_id}</code></a>(.*?)</td>", page.text)
    assert cell is not None
    assert "client <code>ticket-4711</code>" in cell.group(1)


def test_audit_log_dates_past_what_records_can_hold_are_refused_not_a_500(
    browser: Callable[..., Browser],
) -> None:
    audrey = browser("audrey")
    for params in ({"until": "9999-12-31"}, {"since": "0001-01-01"}):
        page = audrey.get("/console/audit", params=params)
        assert page.status_code == 422, (params, page.status_code)
