"""The audit trail over HTTP and the command line, on SQLite and PostgreSQL: verify (with and
without a checkpoint), audited reads, the approval/request-ID/free-text filters, every kind of
result findable by `result=`, and `opsgate audit verify|checkpoint|export`."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.core.audit.chain import Checkpoint
from opsgate.core.audit.files import CSV_COLUMNS
from opsgate.core.audit.records import AuditResult
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import BackendTimeout, LimitExceeded
from opsgate.core.identity.actors import Origin
from opsgate.core.integrations.backends import LookupAnswer
from opsgate.core.integrations.reconcile import reconcile
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.settings import get_settings
from opsgate.web.services import Services
from opsgate_demo.models import Account, Payment
from tests.conftest import TestDatabase, World, demo_policy_with, services_with_policy
from tests.core.test_audit_chain import (
    actor,
    head_of,
    make_trail,
    rechain,
    records,
    tampering,
)
from tests.core.test_remote_actions import ScriptedBackend, failed_answer, remote_services

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def get(
    client: TestClient, world: World, path: str, header_id: str | None = None, **params: Any
) -> httpx.Response:
    """GET as the auditor; `header_id` is sent as X-Request-ID, `params` as the query."""
    headers = world.auth("audrey") | ({"X-Request-ID": header_id} if header_id else {})
    return client.get(f"/api/v1{path}", params=params, headers=headers)


def search(client: TestClient, world: World, **params: Any) -> list[dict[str, Any]]:
    response = get(client, world, "/audit", limit=500, **params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def post(
    client: TestClient,
    world: World,
    user: str,
    path: str,
    request_id: str,
    body: dict[str, Any] | None = None,
    status: int = 200,
) -> dict[str, Any]:
    response = client.post(
        f"/api/v1{path}",
        headers=world.auth(user) | {"X-Request-ID": request_id},
        json=body or {},
    )
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def act(
    client: TestClient,
    world: World,
    user: str,
    action: str,
    target: str,
    request_id: str,
    payload: dict[str, Any] | None = None,
    reason: str = "testing",
    status: int = 200,
) -> dict[str, Any]:
    body = {"target": target, "payload": payload or {}, "reason": reason}
    return post(client, world, user, f"/actions/{action}", request_id, body, status)


def block(client: TestClient, world: World, n: int, request_id: str) -> str:
    target = f"account:{world.account(n)}"
    act(
        client,
        world,
        "alice",
        "account.block",
        target,
        request_id,
        {"reason_code": "fraud_suspected"},
    )
    return target


def request_unblock(client: TestClient, world: World, n: int, tag: str) -> str:
    target = block(client, world, n, f"{tag}-block")
    answer = act(client, world, "rita", "account.unblock", target, f"{tag}-unblock", status=202)
    approval_id: str = answer["approval_id"]
    return approval_id


# --- verify ------------------------------------------------------------------------------------


def test_verify_reports_ok_entries_and_head_and_is_itself_audited(
    client: TestClient, services: Services, world: World, db: Database
) -> None:
    make_trail(services, world)
    head = head_of(db)

    response = get(client, world, "/audit/verify", "verify-1")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "ok": True,
        "entries": head.seq,
        "first_bad_id": None,
        "first_bad_seq": None,
        "problem": None,
        "head": str(head),
        "request_id": response.headers["x-request-id"],
        "anchor": None,  # nothing anchored yet (tests/core/test_anchoring.py)
        "findings": [],
    }
    [note] = [row for row in records(db) if row.client_request_id == "verify-1"]
    assert (note.action, note.result, note.actor_id) == (
        "audit.verify",
        "succeeded",
        world.user_ids["audrey"],
    )
    assert note.parameters == {"ok": True, "entries": head.seq}
    assert note.seq == head.seq + 1


def test_verify_against_an_earlier_checkpoint(
    client: TestClient, services: Services, world: World, db: Database, owner_db: Database
) -> None:
    make_trail(services, world)
    taken = get(client, world, "/audit/verify").json()["head"]
    make_trail(services, world)

    later = get(client, world, "/audit/verify", against=taken)
    assert later.status_code == 200
    assert (later.json()["ok"], later.json()["first_bad_id"]) == (True, None)

    with tampering(owner_db) as session:
        victim = session.get(AuditRecord, 3)
        assert victim is not None
        victim.reason = "rewritten"
        session.flush()
        rechain(session, 3)
    assert get(client, world, "/audit/verify").json()["ok"] is True
    rewritten = get(client, world, "/audit/verify", against=taken).json()
    assert rewritten["ok"] is False
    assert rewritten["first_bad_seq"] == Checkpoint.parse(taken).seq


@pytest.mark.parametrize(
    "against", ["nonsense", "12", "12:abc", "x:" + "a" * 64, "1:" + "A" * 64, "-1:" + "a" * 64]
)
def test_a_malformed_checkpoint_is_a_422_problem(
    client: TestClient, world: World, against: str
) -> None:
    body = assert_problem(
        get(client, world, "/audit/verify", against=against), 422, "invalid_payload"
    )
    assert "checkpoint" in body["detail"]


def test_verify_names_a_tampered_record(
    client: TestClient, services: Services, world: World, db: Database, owner_db: Database
) -> None:
    make_trail(services, world)
    victim = records(db)[4]
    with tampering(owner_db) as session:
        row = session.get(AuditRecord, victim.seq)
        assert row is not None
        row.actor_id = world.user_ids["olga"]

    body = get(client, world, "/audit/verify").json()

    assert (body["ok"], body["first_bad_id"], body["first_bad_seq"]) == (
        False,
        victim.id,
        victim.seq,
    )
    assert body["entries"] == victim.seq


def test_reading_the_trail_is_audited_with_the_reader_and_the_filters(
    client: TestClient, services: Services, world: World, db: Database
) -> None:
    make_trail(services, world)
    response = get(client, world, "/audit", "read-1", action="customer.add_note", q="trail")
    assert response.status_code == 200
    returned = len(response.json()["items"])
    assert returned == 3

    [note] = [row for row in records(db) if row.client_request_id == "read-1"]
    assert (note.action, note.result, note.actor_id, note.actor_name) == (
        "audit.read",
        "succeeded",
        world.user_ids["audrey"],
        "Audrey Blake",
    )
    assert note.parameters == {"action": "customer.add_note", "text": "trail", "returned": 3}


def test_a_refused_reader_is_audited_as_denied(
    client: TestClient, world: World, db: Database
) -> None:
    response = client.get(
        "/api/v1/audit/verify", headers=world.auth("alice") | {"X-Request-ID": "read-denied"}
    )
    assert_problem(response, 403, "forbidden")
    [note] = [row for row in records(db) if row.client_request_id == "read-denied"]
    assert (note.action, note.result, note.actor_id) == (
        "audit.read",
        "denied",
        world.user_ids["alice"],
    )


# --- filters -----------------------------------------------------------------------------------


def test_filter_by_approval_id_and_by_execution_request_id(
    client: TestClient, world: World
) -> None:
    approval_id = request_unblock(client, world, 0, "flt")
    decided = post(
        client, world, "olga", f"/approvals/{approval_id}/approve", "flt-approve", {"comment": "ok"}
    )
    execution_id = decided["execution_request_id"]
    assert decided["status"] == "succeeded" and execution_id

    by_approval = search(client, world, approval_id=approval_id)
    # client_request_id: what the HTTP request that wrote the record sent (the execution
    # runs in the approver's request, under the original request ID).
    assert [(i["result"], i["client_request_id"]) for i in by_approval] == [
        ("succeeded", "flt-approve"),
        ("approved", "flt-approve"),
        ("approval_requested", "flt-unblock"),
    ]
    original_id = by_approval[2]["request_id"]
    assert by_approval[0]["request_id"] == original_id
    assert {i["approval_id"] for i in by_approval} == {approval_id}

    [run] = search(client, world, request_id=execution_id)
    assert (run["result"], run["request_id"], run["execution_request_id"]) == (
        "succeeded",
        original_id,
        execution_id,
    )
    assert run["actor"]["id"] == world.user_ids["rita"]

    original = search(client, world, request_id=original_id)
    assert [i["result"] for i in original] == ["succeeded", "approval_requested"]


REASONS = {
    "q-pct": "Refund 100% confirmed",
    "q-percent": "refund 100 percent",
    "q-under": "batch a_b done",
    "q-x": "batch axb done",
    "q-accent": "Ömer called back",
}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("REFUND", {"q-pct", "q-percent"}),
        ("100%", {"q-pct"}),
        ("%", {"q-pct"}),
        ("a_b", {"q-under"}),
        ("_", {"q-under"}),
        ("ömer", {"q-accent"}),
        ("no such words", set()),
    ],
)
def test_free_text_matches_the_reason_ignoring_case_with_wildcards_literal(
    client: TestClient, world: World, q: str, expected: set[str]
) -> None:
    for request_id, reason in REASONS.items():
        target = f"customer:{world.customer()}"
        act(client, world, "alice", "customer.add_note", target, request_id, {"text": "t"}, reason)
    found = search(client, world, q=q)
    assert {item["client_request_id"] for item in found} == expected
    assert all(q.lower() in item["reason"].lower() for item in found)


# --- every kind of result ----------------------------------------------------------------------


MONITORED = {
    '[actions."account.unblock".approval]\nmode = "enforce"': (
        '[actions."account.unblock".approval]\nmode = "monitor"'
    ),
    "max_amount_minor = 500000": "max_amount_minor = 1",
    "max_count = 30": "max_count = 1",
}


def small_reversible_payment(db: Database) -> Payment:
    with db.reading() as session:
        payment = session.scalars(
            select(Payment)
            .join(Account, Account.id == Payment.account_id)
            .where(Payment.amount_minor.between(1_000, 10_000), Account.status == "active")
            .where(Payment.status == "posted")
            .order_by(Payment.id)
        ).first()
        assert payment is not None
        return payment


def test_every_result_kind_is_recorded_and_found_by_result(
    client: TestClient,
    services: Services,
    world: World,
    db: Database,
    clock: FrozenClock,
) -> None:
    expected: dict[str, str] = {}
    customer = f"customer:{world.customer()}"

    act(client, world, "alice", "customer.add_note", customer, "k-note", {"text": "hello"})
    expected["succeeded"] = "k-note"

    target = block(client, world, 0, "k-block")
    answer = act(
        client, world, "bob", "account.block", target, "k-block-again",
        {"reason_code": "fraud_suspected"}, status=409,
    )  # fmt: skip
    assert answer["code"] == "domain_rejected"
    expected["failed"] = "k-block-again"

    act(client, world, "audrey", "account.block", target, "k-denied", status=403)
    expected["denied"] = "k-denied"

    act(
        client, world, "alice", "customer.add_note", customer, "k-invalid", {"text": ""}, status=422
    )
    expected["invalid"] = "k-invalid"

    approved = request_unblock(client, world, 1, "k-a")
    expected["approval_requested"] = "k-a-unblock"
    post(client, world, "olga", f"/approvals/{approved}/approve", "k-approve", {"comment": "ok"})
    expected["approved"] = "k-approve"

    rejected = request_unblock(client, world, 2, "k-r")
    answer = post(
        client, world, "olga", f"/approvals/{rejected}/reject", "k-reject", {"comment": "no"}
    )
    assert answer["status"] == "rejected"
    expected["rejected"] = "k-reject"

    cancelled = request_unblock(client, world, 3, "k-c")
    assert post(client, world, "rita", f"/approvals/{cancelled}/cancel", "k-cancel")["status"] == (
        "cancelled"
    )
    expected["cancelled"] = "k-cancel"

    stale = request_unblock(client, world, 4, "k-s")
    with db.writing() as session:
        session.execute(
            update(Account)
            .where(Account.id == world.account(4))
            .values(version=Account.version + 1)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    answer = post(
        client, world, "olga", f"/approvals/{stale}/approve", "k-approve-stale",
        {"comment": "ok"}, status=409,
    )  # fmt: skip
    assert answer["code"] == "stale_approval"
    expected["stale"] = "k-approve-stale"  # the run, in the approver's request

    late = request_unblock(client, world, 5, "k-e")
    clock.advance(timedelta(hours=25))
    answer = post(
        client, world, "olga", f"/approvals/{late}/approve", "k-approve-late",
        {"comment": "ok"}, status=409,
    )  # fmt: skip
    assert answer["code"] == "approval_expired"
    expected["expired"] = "k-approve-late"

    # Monitor modes and limits need another policy on the same database.
    monitored = services_with_policy(services, demo_policy_with(MONITORED))
    block(client, world, 6, "k-m-block")
    result = monitored.gateway.submit(
        actor(world, "rita"),
        "account.unblock",
        {"target": f"account:{world.account(6)}", "payload": {}, "reason": "monitored"},
        Origin("k-monitor"),
    )
    assert result.status == "succeeded"
    expected["would_require_approval"] = "k-monitor"

    payment = small_reversible_payment(db)
    body = {
        "target": f"payment:{payment.id}",
        "payload": {"amount_minor": 100, "reason_code": "customer_dispute"},
        "reason": "customer disputes the charge",
    }
    result = monitored.gateway.submit(
        actor(world, "alice"), "payment.reverse", body, Origin("k-rev-1"), "k-rev-1"
    )
    assert result.status == "succeeded"
    expected["would_be_limited"] = "k-rev-1"
    with pytest.raises(LimitExceeded):
        monitored.gateway.submit(
            actor(world, "alice"), "payment.reverse", body, Origin("k-rev-2"), "k-rev-2"
        )
    expected["limited"] = "k-rev-2"

    replay = monitored.gateway.submit(
        actor(world, "alice"), "payment.reverse", body, Origin("k-rev-3"), "k-rev-1"
    )
    assert replay.replayed
    expected["replayed"] = "k-rev-3"

    # A remote backend that never answers, then reconciliation.
    scripted = ScriptedBackend(answers=[lambda _request: failed_answer("unknown", None)])
    remotely = remote_services(services, scripted)
    with pytest.raises(BackendTimeout):
        remotely.gateway.submit(
            actor(world, "bob"), "payment.reverse", body, Origin("k-unknown"), "k-unknown"
        )
    expected["unknown"] = "k-unknown"
    scripted.lookups.append(LookupAnswer(status="not_found", http_status=404))
    clock.advance(timedelta(minutes=10))
    assert [s.status for s in reconcile(remotely.gateway)] == ["not_executed"]
    expected["reconciled"] = "k-unknown"

    assert set(expected) == {kind.value for kind in AuditResult}
    for kind, request_id in expected.items():
        found = search(client, world, result=kind)
        assert {item["result"] for item in found} == {kind}, kind
        # Through the gateway the tag is the request ID; over HTTP, the caller's own ID.
        tags = {item["request_id"] for item in found} | {
            item["client_request_id"] for item in found
        }
        assert request_id in tags, kind
    assert get(client, world, "/audit/verify").json()["ok"] is True


# --- the command line --------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli_db(test_db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestDatabase]:
    monkeypatch.setenv("OPSGATE_DATABASE_URL", test_db.url)
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    get_settings.cache_clear()
    yield test_db
    get_settings.cache_clear()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def stderr_of(result: Result) -> str:
    try:
        return " ".join(result.stderr.split())
    except ValueError:  # older Click: stderr mixed into output
        return " ".join(result.output.split())


def test_cli_verify_checkpoint_and_verify_against(
    cli_db: TestDatabase, services: Services, world: World, db: Database
) -> None:
    make_trail(services, world)
    entries = len(records(db))

    verified = invoke("audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert f"ok: {entries} records verified" in verified.stdout
    cli_note = records(db)[-1]
    assert (cli_note.action, cli_note.parameters) == (
        "audit.verify",
        {"ok": True, "entries": entries},
    )
    assert (cli_note.actor_id or "").startswith("cli:")

    point = invoke("audit", "checkpoint")
    assert point.exit_code == 0, point.output
    assert point.stdout.strip() == str(head_of(db))

    make_trail(services, world)
    extends = invoke("audit", "verify", "--against", point.stdout.strip())
    assert extends.exit_code == 0, extends.output
    assert f"extends {point.stdout.strip()}" in extends.stdout


def test_cli_verify_exits_1_naming_the_tampered_record(
    cli_db: TestDatabase, services: Services, world: World, db: Database, owner_db: Database
) -> None:
    make_trail(services, world)
    point = invoke("audit", "checkpoint").stdout.strip()
    victim = records(db)[5]
    with tampering(owner_db) as session:
        row = session.get(AuditRecord, victim.seq)
        assert row is not None
        row.result = "succeeded" if row.result != "succeeded" else "failed"

    broken = invoke("audit", "verify")
    assert broken.exit_code == 1
    assert f"BROKEN at record {victim.id} (seq {victim.seq})" in stderr_of(broken)

    with tampering(owner_db) as session:
        rechain(session, victim.seq)
    assert invoke("audit", "verify").exit_code == 0
    against = invoke("audit", "verify", "--against", point)
    assert against.exit_code == 1
    assert "checkpoint" in stderr_of(against)


def test_cli_verify_refuses_a_malformed_checkpoint(cli_db: TestDatabase) -> None:
    result = invoke("audit", "verify", "--against", "12:nothex")
    assert result.exit_code == 2
    assert "checkpoint" in stderr_of(result)


def test_cli_export_csv_to_a_file(
    cli_db: TestDatabase, services: Services, world: World, db: Database, tmp_path: Path
) -> None:
    make_trail(services, world)
    expected = records(db)
    out = tmp_path / "audit.csv"

    result = invoke("audit", "export", "--format", "csv", "--out", str(out))

    assert result.exit_code == 0, result.output
    assert f"{len(expected)} records exported" in stderr_of(result)
    with out.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    assert tuple(header) == CSV_COLUMNS
    assert [row[1] for row in rows] == [r.id for r in expected]
    assert records(db)[-1].action == "audit.export"

    filtered = tmp_path / "denied.csv"
    result = invoke(
        "audit", "export", "--format", "csv", "--out", str(filtered), "--result", "denied"
    )
    assert result.exit_code == 0, result.output
    with filtered.open(newline="", encoding="utf-8") as handle:
        _, *rows = list(csv.reader(handle))
    assert [row[1] for row in rows] == [r.id for r in expected if r.result == "denied"]
