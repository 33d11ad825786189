"""What must hold after any amount of traffic and any number of kills (DESIGN.md invariants
2, 4, 5, 6, 7, 10): checked from the databases themselves, against what clients were told."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord, BackendCall
from opsgate_demo.ledger_service.models import LedgerOperation
from opsgate_demo.models import Note, Payment
from tests.domain.test_money import ledger_is_consistent
from tests.soak.traffic import Answer

OPEN_CALLS = ("pending", "unknown")


@dataclass
class Findings:
    """Every broken invariant, named; empty when all hold."""

    broken: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    def expect(self, holds: bool, what: str) -> None:
        if not holds:
            self.broken.append(what)


def count_rows(url: str, model: type[Any]) -> int:
    return len(_rows(url, model))


def _rows(url: str, model: type[Any]) -> list[Any]:
    db = Database(url)
    try:
        with db.reading() as session:
            return list(session.scalars(select(model)))
    finally:
        db.dispose()


def carries_effect(record: AuditRecord) -> bool:
    """The one audit record that reports a backend effect: the request that learned it
    (`succeeded`), or reconciliation that learned it and was not told by a sibling retry."""
    if record.result == "succeeded":
        return True
    outcome = record.outcome or {}
    return (
        record.result == "reconciled"
        and outcome.get("backend_outcome") == "succeeded"
        and "settled_by" not in outcome
    )


def check(
    opsgate_url: str, ledger_url: str, answers: list[Answer], *, notes_before: int
) -> Findings:
    found = Findings()
    records: list[AuditRecord] = _rows(opsgate_url, AuditRecord)
    calls: list[BackendCall] = _rows(opsgate_url, BackendCall)
    operations: list[LedgerOperation] = _rows(ledger_url, LedgerOperation)
    approvals: list[ApprovalRequest] = _rows(opsgate_url, ApprovalRequest)

    # Each key executed at most once, and every ledger effect has exactly one audit record.
    effects = [op for op in operations if op.http_status is not None and op.http_status < 300]
    calls_by_key: dict[str, list[BackendCall]] = {}
    for call in calls:
        calls_by_key.setdefault(call.idempotency_key, []).append(call)
    by_request: dict[str, list[AuditRecord]] = {}
    for record in records:
        for request_id in (record.request_id, record.execution_request_id):
            if request_id:
                by_request.setdefault(request_id, []).append(record)
    for op in effects:
        key_calls = calls_by_key.get(op.key, [])
        found.expect(bool(key_calls), f"ledger effect {op.key} has no backend call in opsgate")
        carrying = {
            record.id
            for call in key_calls
            for request_id in (call.request_id, call.execution_request_id)
            if request_id
            for record in by_request.get(request_id, [])
            if record.action == op.action and carries_effect(record)
            and (record.outcome or {}).get("backend_call_id") in (None, call.id)
        }  # fmt: skip
        found.expect(
            len(carrying) == 1,
            f"ledger effect {op.key} ({op.action}) has {len(carrying)} audit records carrying it",
        )
    executed_keys = {call.idempotency_key for call in calls if call.status == "succeeded"}
    found.expect(
        executed_keys <= {op.key for op in effects},
        "opsgate recorded a backend success the ledger never committed: "
        f"{sorted(executed_keys - {op.key for op in effects})[:5]}",
    )

    # The ledger balances; each payment's reversed amount equals its reversals; the read model
    # mirrors it wherever no call is still open.
    ledger_db = Database(ledger_url)
    try:
        ledger_is_consistent(ledger_db)
    except AssertionError as exc:
        found.broken.append(f"ledger inconsistent: {exc}")
    finally:
        ledger_db.dispose()
    open_targets = {call.target for call in calls if call.status in OPEN_CALLS}
    ledger_payments = {p.id: p.reversed_minor for p in _rows(ledger_url, Payment)}
    for payment in _rows(opsgate_url, Payment):
        if f"payment:{payment.id}" in open_targets:
            continue
        found.expect(
            payment.reversed_minor == ledger_payments.get(payment.id),
            f"payment {payment.id}: opsgate shows {payment.reversed_minor} reversed, "
            f"the ledger {ledger_payments.get(payment.id)}",
        )

    # In-process effects: one note per succeeded add_note record.
    notes = _rows(opsgate_url, Note)
    note_records = [
        r for r in records if r.action == "customer.add_note" and r.result == "succeeded"
    ]
    found.expect(
        len(notes) - notes_before == len(note_records),
        f"{len(notes)} notes but {len(note_records)} succeeded add_note records",
    )

    # Clients: every answer that names an audit record names one that exists; every 200 or
    # 202 has its record under its own request ID (or, replayed, under the first one's).
    audit_ids = {record.id for record in records}
    for answer in answers:
        if answer.status in (200, 202):
            found.expect(
                answer.body.get("audit_id") in audit_ids,
                f"{answer.kind} answer {answer.request_id} names a missing audit record",
            )

    # No approval stranded: nothing `approved` is left unexecuted, nothing `executing`
    # without an open backend call that reconciliation will finish.
    open_call_approvals = {
        call.approval_id for call in calls if call.status in OPEN_CALLS and call.approval_id
    }
    for approval in approvals:
        found.expect(approval.status != "approved", f"approval {approval.id} stranded approved")
        if approval.status == "executing":
            found.expect(
                approval.id in open_call_approvals,
                f"approval {approval.id} executing with no open backend call",
            )

    found.figures = {
        "answers": len(answers),
        "answers_by_status": len(Counter(a.status for a in answers)),
        "ledger_effects": len(effects),
        "audit_records": len(records),
        "approvals": len(approvals),
        "approvals_succeeded": sum(1 for a in approvals if a.status == "succeeded"),
        "calls_open": sum(1 for c in calls if c.status in OPEN_CALLS),
    }
    return found
