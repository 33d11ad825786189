"""What the customer page and the action pages read from the demo backend. Reads only: every
change goes through the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.actions.registry import Registry, TargetRef
from opsgate.db.models import AuditRecord
from opsgate_demo.models import (
    Account,
    Customer,
    Note,
    Payment,
    PaymentReversal,
)
from opsgate_demo.search import customer_accounts, latest_notes, latest_payments

PAYMENTS_SHOWN = 50
NOTES_SHOWN = 50
ACTIVITY_SHOWN = 25
# Page views are audited too (as by the API); the activity list shows what was done instead.
READ_ACTION = "records.read"


@dataclass
class CustomerView:
    customer: Customer
    accounts: list[Account]
    payments: list[Payment]
    reversals: dict[str, list[PaymentReversal]]
    notes: list[Note]
    activity: list[AuditRecord]
    accounts_by_id: dict[str, Account] = field(default_factory=dict)


def customer_view(session: Session, customer_id: str) -> CustomerView | None:
    customer = session.get(Customer, customer_id)
    if customer is None:
        return None
    accounts = customer_accounts(session, customer.id)
    account_ids = [a.id for a in accounts]
    payments = latest_payments(session, account_ids, limit=PAYMENTS_SHOWN)
    reversals: dict[str, list[PaymentReversal]] = {}
    if payments:
        for reversal in session.scalars(
            select(PaymentReversal)
            .where(PaymentReversal.payment_id.in_([p.id for p in payments]))
            .order_by(PaymentReversal.created_at)
        ):
            reversals.setdefault(reversal.payment_id, []).append(reversal)
    notes = latest_notes(session, customer.id, limit=NOTES_SHOWN)
    targets = [
        f"customer:{customer.id}",
        *(f"account:{a}" for a in account_ids),
        *(f"payment:{p.id}" for p in payments),
    ]
    activity = list(
        session.scalars(
            select(AuditRecord)
            .where(AuditRecord.target.in_(targets))
            .where(AuditRecord.action != READ_ACTION)
            .order_by(AuditRecord.seq.desc())
            .limit(ACTIVITY_SHOWN)
        )
    )
    return CustomerView(
        customer=customer,
        accounts=accounts,
        payments=payments,
        reversals=reversals,
        notes=notes,
        activity=activity,
        accounts_by_id={a.id: a for a in accounts},
    )


@dataclass(frozen=True)
class TargetSummary:
    ref: TargetRef
    state: dict[str, Any] | None
    # Where an operator goes back to: the customer page the target belongs to.
    home: str | None


def customer_of(session: Session, ref: TargetRef) -> str | None:
    """The customer a target belongs to, if any."""
    if ref.kind == "customer":
        return ref.id
    if ref.kind == "account":
        return session.scalar(select(Account.customer_id).where(Account.id == ref.id))
    if ref.kind == "payment":
        return session.scalar(
            select(Account.customer_id)
            .join(Payment, Payment.account_id == Account.id)
            .where(Payment.id == ref.id)
        )
    return None


def target_summary(session: Session, registry: Registry, target: str) -> TargetSummary | None:
    """The target's recorded state (as the audit trail sees it: no personal data) and its
    customer page; None when `target` is not a `kind:id` string."""
    try:
        ref = TargetRef.parse(target)
    except ValueError:
        return None
    kind = registry.target_kind(ref.kind)
    obj = kind.load(session, ref.id, False) if kind else None
    state = kind.snapshot(obj) if kind and obj is not None else None
    customer = customer_of(session, ref) if state is not None else None
    return TargetSummary(ref, state, f"/console/customers/{customer}" if customer else None)
