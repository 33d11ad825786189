"""Finding records by the paths operators know: email, phone, name, or an ID."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from opsgate.domain.models import Account, AccountKind, Customer, Note, Payment

_ID = re.compile(r"^(cus|acc|pay)_([0-9a-z]{26})$", re.IGNORECASE)
_PHONE_CHARS = re.compile(r"^[\d\s()+.-]+$")


@dataclass
class SearchResults:
    customers: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)


def mask_phone(phone: str) -> str:
    return "•" * max(len(phone) - 4, 0) + phone[-4:]


def _customer(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "email": c.email,
        "phone": mask_phone(c.phone),
        "status": c.status,
    }


def _account(a: Account) -> dict[str, Any]:
    return {
        "id": a.id,
        "customer_id": a.customer_id,
        "currency": a.currency,
        "status": a.status,
        "balance_minor": a.balance_minor,
    }


def _payment(p: Payment) -> dict[str, Any]:
    return {
        "id": p.id,
        "account_id": p.account_id,
        "direction": p.direction,
        "method": p.method,
        "amount_minor": p.amount_minor,
        "currency": p.currency,
        "posted_at": p.posted_at.isoformat(),
    }


def search(session: Session, query: str, *, limit: int = 20) -> SearchResults:
    """Search by ID (exact), email (exact or prefix), phone (digits, suffix) or name (substring)."""
    q = query.strip()
    found = SearchResults()
    if not q:
        return found
    id_match = _ID.match(q)
    if id_match:
        ident = f"{id_match.group(1).lower()}_{id_match.group(2).upper()}"
        if (c := session.get(Customer, ident)) is not None:
            found.customers.append(_customer(c))
        if (a := session.get(Account, ident)) is not None and a.kind == AccountKind.CUSTOMER:
            found.accounts.append(_account(a))
        if (p := session.get(Payment, ident)) is not None:
            found.payments.append(_payment(p))
        return found
    if "@" in q:
        email = q.lower()
        stmt = select(Customer).where(
            or_(Customer.email == email, Customer.email.startswith(email, autoescape=True))
        )
    elif _PHONE_CHARS.match(q) and len(digits := re.sub(r"\D", "", q)) >= 4:
        stmt = select(Customer).where(Customer.phone.endswith(digits, autoescape=True))
    else:
        # A name fragment, or the start of an email address typed without its domain.
        stmt = select(Customer).where(
            or_(
                func.lower(Customer.name).contains(q.lower(), autoescape=True),
                Customer.email.startswith(q.lower(), autoescape=True),
            )
        )
    customers = session.scalars(stmt.order_by(Customer.name, Customer.id).limit(limit)).all()
    found.customers = [_customer(c) for c in customers]
    return found


def customer_accounts(session: Session, customer_id: str) -> list[Account]:
    """A customer's own accounts (no system accounts), oldest first."""
    return list(
        session.scalars(
            select(Account)
            .where(Account.customer_id == customer_id, Account.kind == AccountKind.CUSTOMER)
            .order_by(Account.created_at, Account.id)
        )
    )


def latest_payments(session: Session, account_ids: list[str], *, limit: int) -> list[Payment]:
    """The newest payments of these accounts, newest first."""
    if not account_ids:
        return []
    return list(
        session.scalars(
            select(Payment)
            .where(Payment.account_id.in_(account_ids))
            .order_by(Payment.posted_at.desc(), Payment.id.desc())
            .limit(limit)
        )
    )


def latest_notes(session: Session, customer_id: str, *, limit: int) -> list[Note]:
    """A customer's newest notes, newest first."""
    return list(
        session.scalars(
            select(Note)
            .where(Note.customer_id == customer_id)
            .order_by(Note.created_at.desc(), Note.id.desc())
            .limit(limit)
        )
    )


def customer_overview(session: Session, customer_id: str) -> dict[str, Any] | None:
    """A customer's record as an operator first sees it (phone masked), with their accounts,
    latest payments and notes; None when there is no such customer."""
    customer = session.get(Customer, customer_id)
    if customer is None:
        return None
    accounts = customer_accounts(session, customer.id)
    payments = latest_payments(session, [a.id for a in accounts], limit=100)
    notes = latest_notes(session, customer.id, limit=50)
    return {
        "customer": _customer(customer)
        | {"kyc_status": customer.kyc_status, "created_at": customer.created_at.isoformat()},
        "accounts": [_account(a) | {"blocked_reason": a.blocked_reason} for a in accounts],
        "payments": [
            _payment(p)
            | {
                "status": p.status,
                "reversed_minor": p.reversed_minor,
                "counterparty": p.counterparty,
            }
            for p in payments
        ],
        "notes": [
            {
                "id": n.id,
                "author": n.author_name,
                "created_at": n.created_at.isoformat(),
                "text": n.text,
            }
            for n in notes
        ],
    }
