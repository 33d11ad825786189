"""Finding records by the paths operators know: email, phone, name, or an ID.

A search must not become an oracle for the personal data it masks. Email needs the whole
address; a phone number matches as a whole, or by exactly the last four digits every page
already shows, never by a longer or shorter part that would extend them one digit at a time.
Results show name, email and phone masked (core/audit/redaction.py, as the console shows them);
the full values come only from the audited `customer.view_pii` action.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opsgate.plugin import mask_email, mask_name, mask_phone
from opsgate_demo.models import Account, AccountKind, Customer, Note, Payment

_ID = re.compile(r"^(cus|acc|pay)_([0-9a-z]{26})$", re.IGNORECASE)
_PHONE_CHARS = re.compile(r"^[\d\s()+.-]+$")
# The demo's customers have North American numbers: ten digits typed without a country code
# are a whole national number, the same as +1 and those ten digits.
DEFAULT_COUNTRY_CODE = "1"
LAST_DIGITS = 4


class TermKind(StrEnum):
    """What a search term was taken for (recorded in the audit trail instead of the term)."""

    ID = "id"
    EMAIL = "email"
    PHONE = "phone"
    LAST4 = "last4"
    NAME = "name"


@dataclass(frozen=True)
class SearchTerm:
    """A query as it is matched: its kind and its normalised text (an ID in its canonical
    case, an email in lower case, a phone number as E.164 digits without the plus, a name in
    lower case with single spaces). `matchable` is False for digits that are neither a whole
    number nor exactly the last four: such a term matches nothing."""

    kind: TermKind
    text: str
    matchable: bool = True


@dataclass
class SearchResults:
    customers: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.customers) + len(self.accounts) + len(self.payments)


def _customer(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": mask_name(c.name),
        "email": mask_email(c.email),
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


def phone_number(digits: str, *, plus: bool) -> str | None:
    """Typed digits as a whole number (E.164 digits, no plus), or None when they cannot be
    one: ten digits without a plus are a national number of the default country."""
    if not plus and len(digits) == 10:
        return DEFAULT_COUNTRY_CODE + digits
    return digits if 11 <= len(digits) <= 15 else None


def _storable(text: str) -> bool:
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


def classify(query: str) -> SearchTerm | None:
    """What `query` searches for; None for a blank query."""
    q = query.strip()
    if not q:
        return None
    if not _storable(q):
        # No stored value holds a NUL or a lone surrogate, and PostgreSQL refuses to compare one.
        return SearchTerm(TermKind.NAME, q, matchable=False)
    if id_match := _ID.match(q):
        return SearchTerm(TermKind.ID, f"{id_match.group(1).lower()}_{id_match.group(2).upper()}")
    if "@" in q:
        return SearchTerm(TermKind.EMAIL, q.lower())
    digits = re.sub(r"\D", "", q)
    if _PHONE_CHARS.match(q) and len(digits) >= LAST_DIGITS:
        if len(digits) == LAST_DIGITS and "+" not in q:
            return SearchTerm(TermKind.LAST4, digits)
        number = phone_number(digits, plus="+" in q)
        return SearchTerm(TermKind.PHONE, number or digits, matchable=number is not None)
    return SearchTerm(TermKind.NAME, " ".join(q.split()).lower())


def search(session: Session, query: str, *, limit: int = 20) -> SearchResults:
    """Search by ID (exact), email (the whole address, any case), phone (the whole number in
    any format, or exactly its last four digits) or name (substring, any case). Customers'
    personal data in the results is masked."""
    term = classify(query)
    found = SearchResults()
    if term is None:
        return found
    if term.kind == TermKind.ID:
        if (c := session.get(Customer, term.text)) is not None:
            found.customers.append(_customer(c))
        if (a := session.get(Account, term.text)) is not None and a.kind == AccountKind.CUSTOMER:
            found.accounts.append(_account(a))
        if (p := session.get(Payment, term.text)) is not None:
            found.payments.append(_payment(p))
        return found
    if not term.matchable:
        return found  # a part of a number: matching it would extend the four digits shown
    match term.kind:
        case TermKind.EMAIL:
            # Addresses are stored in lower case; an equality keeps the unique index in use.
            where = Customer.email == term.text
        case TermKind.PHONE:
            where = Customer.phone == term.text
        case TermKind.LAST4:
            where = Customer.phone.endswith(term.text, autoescape=True)
        case _:
            where = func.lower(Customer.name).contains(term.text, autoescape=True)
    stmt = select(Customer).where(where).order_by(Customer.name, Customer.id).limit(limit)
    found.customers = [_customer(c) for c in session.scalars(stmt)]
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
