"""How the console and the API show the demo's records, through the public plugin API only:
one search provider (customers, accounts, payments) and a record view per kind. A customer
has a page of the demo's own (templates/customer.html); an account or a payment is shown as a
row of its customer's page (`within`).

Personal data (a customer's name, email and phone) is masked here unless the reader revealed
it through `customer.view_pii`, the audited read action the customer view names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from opsgate.plugin import (
    ReadContext,
    Record,
    RecordField,
    RecordView,
    SearchHit,
    SearchResults,
    mask_email,
    mask_name,
    mask_phone,
)
from opsgate_demo import search as finding
from opsgate_demo.models import Account, AccountKind, Customer, Note, Payment, PaymentReversal

PAYMENTS_SHOWN = 50
NOTES_SHOWN = 50


def _money(minor: int, currency: str) -> str:
    sign = "−" if minor < 0 else ""
    return f"{sign}{abs(minor) / 100:,.2f} {currency}"


class DemoSearch:
    """Customers by email, phone (whole, or the last four digits), name or ID; accounts and
    payments by ID (opsgate_demo/search.py), masked."""

    name: str = "demo"
    kinds: Sequence[str] = ("customer", "account", "payment")

    def search(self, ctx: ReadContext, query: str, limit: int) -> SearchResults:
        term = finding.classify(query)
        found = finding.search(ctx.session, query, limit=limit)
        hits = [
            SearchHit("customer", c["id"], c["name"], c, detail=f"{c['email']} · {c['phone']}")
            for c in found.customers
        ]
        hits += [
            SearchHit(
                "account",
                a["id"],
                a["id"],
                a,
                detail=f"{_money(a['balance_minor'], a['currency'])} · {a['status']}",
            )
            for a in found.accounts
        ]
        hits += [
            SearchHit(
                "payment",
                p["id"],
                p["id"],
                p,
                detail=f"{_money(p['amount_minor'], p['currency'])} · {p['direction']}",
            )
            for p in found.payments
        ]
        if term is None:
            return SearchResults(hits)
        return SearchResults(hits, term_kind=term.kind.value, term=term.text)


def _customer_fields(c: Customer, revealed: bool) -> list[RecordField]:
    return [
        RecordField("name", "Name", c.name if revealed else mask_name(c.name), pii=True),
        RecordField("email", "Email", c.email if revealed else mask_email(c.email), pii=True),
        RecordField("phone", "Phone", c.phone if revealed else mask_phone(c.phone), pii=True),
        RecordField("status", "Status", c.status),
        RecordField("kyc_status", "KYC", c.kyc_status),
        RecordField(
            "kyc_checked_at",
            "KYC checked",
            c.kyc_checked_at.isoformat() if c.kyc_checked_at else None,
        ),
        RecordField("created_at", "Customer since", c.created_at.isoformat()),
    ]


def read_customer(ctx: ReadContext, ident: str) -> Record | None:
    """A customer with their accounts, latest payments and notes."""
    c = ctx.session.get(Customer, ident)
    if c is None:
        return None
    accounts = finding.customer_accounts(ctx.session, c.id)
    payments = finding.latest_payments(ctx.session, [a.id for a in accounts], limit=PAYMENTS_SHOWN)
    notes = finding.latest_notes(ctx.session, c.id, limit=NOTES_SHOWN)
    related = {f"account:{a.id}": f"{a.name} ({a.currency})" for a in accounts}
    related |= {f"payment:{p.id}": _money(p.amount_minor, p.currency) for p in payments}
    sections: dict[str, list[Mapping[str, Any]]] = {
        "Accounts": [
            {
                "Account": a.id,
                "Name": a.name,
                "Balance": _money(a.balance_minor, a.currency),
                "Status": a.status,
                "Blocked because": a.blocked_reason,
            }
            for a in accounts
        ],
        "Payments": [
            {
                "Payment": p.id,
                "Posted": p.posted_at.isoformat(),
                "Account": p.account_id,
                "Direction": f"{p.direction} · {p.method}",
                "Counterparty": p.counterparty,
                "Amount": _money(p.amount_minor, p.currency),
                "Reversed": _money(p.reversed_minor, p.currency) if p.reversed_minor else None,
                "Status": p.status,
            }
            for p in payments
        ],
        "Notes": [
            {"Note": n.text, "Author": n.author_name, "Written": n.created_at.isoformat()}
            for n in notes
        ],
    }
    name = c.name if ctx.reveal_pii else mask_name(c.name)
    return Record("customer", c.id, name, _customer_fields(c, ctx.reveal_pii), related, sections)


@dataclass
class CustomerPage:
    """What the demo's customer page shows beyond the Record: the rows as objects."""

    accounts: list[Account]
    payments: list[Payment]
    notes: list[Note]
    reversals: dict[str, list[PaymentReversal]] = field(default_factory=dict)


def customer_context(ctx: ReadContext, ident: str) -> Mapping[str, Any] | None:
    c = ctx.session.get(Customer, ident)
    if c is None:
        return None
    accounts = finding.customer_accounts(ctx.session, c.id)
    payments = finding.latest_payments(ctx.session, [a.id for a in accounts], limit=PAYMENTS_SHOWN)
    page = CustomerPage(accounts, payments, finding.latest_notes(ctx.session, c.id, limit=50))
    if payments:
        for reversal in ctx.session.scalars(
            select(PaymentReversal)
            .where(PaymentReversal.payment_id.in_([p.id for p in payments]))
            .order_by(PaymentReversal.created_at)
        ):
            page.reversals.setdefault(reversal.payment_id, []).append(reversal)
    return {"customer": c, "view": page}


def _account(ctx: ReadContext, ident: str) -> Account | None:
    a = ctx.session.get(Account, ident)
    return a if a is not None and a.kind == AccountKind.CUSTOMER else None


def read_account(ctx: ReadContext, ident: str) -> Record | None:
    a = _account(ctx, ident)
    if a is None:
        return None
    fields = [
        RecordField("customer", "Customer", a.customer_id, link=f"customer:{a.customer_id}"),
        RecordField("name", "Name", a.name),
        RecordField("currency", "Currency", a.currency),
        RecordField("balance", "Balance", _money(a.balance_minor, a.currency)),
        RecordField("status", "Status", a.status),
        RecordField("blocked_reason", "Blocked because", a.blocked_reason),
    ]
    return Record(
        "account", a.id, f"Account {a.id}", fields, {f"customer:{a.customer_id}": "Owner"}
    )


def account_within(ctx: ReadContext, ident: str) -> str | None:
    a = _account(ctx, ident)
    return f"customer:{a.customer_id}" if a is not None and a.customer_id else None


def _payment_owner(ctx: ReadContext, p: Payment) -> str | None:
    owner = ctx.session.scalar(select(Account.customer_id).where(Account.id == p.account_id))
    return f"customer:{owner}" if owner else None


def read_payment(ctx: ReadContext, ident: str) -> Record | None:
    p = ctx.session.get(Payment, ident)
    if p is None:
        return None
    fields = [
        RecordField("account", "Account", p.account_id, link=f"account:{p.account_id}"),
        RecordField("posted_at", "Posted", p.posted_at.isoformat()),
        RecordField("direction", "Direction", f"{p.direction} · {p.method}"),
        RecordField("counterparty", "Counterparty", p.counterparty),
        RecordField("amount", "Amount", _money(p.amount_minor, p.currency)),
        RecordField("status", "Status", p.status),
    ]
    owner = _payment_owner(ctx, p)
    related = {f"account:{p.account_id}": "Account"} | ({owner: "Customer"} if owner else {})
    return Record("payment", p.id, f"Payment {p.id}", fields, related)


def payment_within(ctx: ReadContext, ident: str) -> str | None:
    p = ctx.session.get(Payment, ident)
    return _payment_owner(ctx, p) if p is not None else None


SEARCH = (DemoSearch(),)
SEARCH_HINT = (
    "Customers by the whole email address, the whole phone number or its last four digits, "
    "or a name; customers, accounts and payments by ID (cus_…, acc_…, pay_…)."
)
VIEWS = (
    RecordView(
        "customer",
        read_customer,
        collection="customers",
        reveal="customer.view_pii",
        template="customer.html",
        context=customer_context,
    ),
    RecordView("account", read_account, collection="accounts", within=account_within),
    RecordView("payment", read_payment, collection="payments", within=payment_within),
)
