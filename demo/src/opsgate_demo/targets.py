"""Target kinds of the demo backend: how to find each and which state is worth recording."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from opsgate.plugin import TargetKind
from opsgate_demo.models import Account, AccountKind, Customer, Payment


def _loader(model: Any, *conditions: Any) -> Any:
    """A target loader with its two statements built once (plain and row-locking)."""
    plain = select(model).where(model.id == bindparam("ident"), *conditions)
    locking = plain.with_for_update()

    def load(session: Session, ident: str, lock: bool) -> Any:
        stmt = locking if lock else plain
        return session.scalars(stmt, {"ident": ident}).one_or_none()

    return load


_load_customer = _loader(Customer)
# System accounts (settlement, adjustments) are not operator targets.
_load_account = _loader(Account, Account.kind == AccountKind.CUSTOMER)
_load_payment = _loader(Payment)


def customer_state(c: Customer) -> dict[str, Any]:
    # No email, phone or name here: snapshots go to the audit trail, PII does not.
    return {
        "id": c.id,
        "status": c.status,
        "kyc_status": c.kyc_status,
        "kyc_checked_at": c.kyc_checked_at.isoformat() if c.kyc_checked_at else None,
        "version": c.version,
    }


def account_state(a: Account) -> dict[str, Any]:
    return {
        "id": a.id,
        "customer_id": a.customer_id,
        "status": a.status,
        "blocked_reason": a.blocked_reason,
        "currency": a.currency,
        "balance_minor": a.balance_minor,
        "version": a.version,
    }


def payment_state(p: Payment) -> dict[str, Any]:
    return {
        "id": p.id,
        "account_id": p.account_id,
        "direction": p.direction,
        "method": p.method,
        "amount_minor": p.amount_minor,
        "currency": p.currency,
        "status": p.status,
        "reversed_minor": p.reversed_minor,
        "version": p.version,
    }


CUSTOMER_FIELDS = frozenset({"id", "status", "kyc_status", "kyc_checked_at", "version"})
ACCOUNT_FIELDS = frozenset(
    {"id", "customer_id", "status", "blocked_reason", "currency", "balance_minor", "version"}
)
PAYMENT_FIELDS = frozenset(
    {
        "id",
        "account_id",
        "direction",
        "method",
        "amount_minor",
        "currency",
        "status",
        "reversed_minor",
        "version",
    }
)


def _customer_of_customer(session: Session, c: Customer) -> str:
    return f"customer:{c.id}"


def _customer_of_account(session: Session, a: Account) -> str | None:
    return f"customer:{a.customer_id}" if a.customer_id else None


def _customer_of_payment(session: Session, p: Payment) -> str | None:
    customer_id = session.scalar(select(Account.customer_id).where(Account.id == p.account_id))
    return f"customer:{customer_id}" if customer_id else None


def _mirror(model: Any, fields: tuple[str, ...], *, same_version: bool = False) -> Any:
    """Copy `fields` of the state a backend reports into the local row, when the backend's
    version is newer (answers may arrive out of order). A Core UPDATE: the row takes the
    backend's version as it is, instead of the ORM counting its own.

    `same_version`: also copy at an equal version. Accounts need it: a balance moves without
    a new version (so that approvals on an account do not go stale with every posting), so
    two answers about one account cannot be ordered and the later-settled one wins until the
    next change; the ledger service stays the system of record."""
    table = cast(Table, model.__table__)

    def mirror(session: Session, ident: str, state: Mapping[str, Any]) -> None:
        version = state.get("version")
        values = {name: state[name] for name in fields if name in state}
        if not isinstance(version, int) or not values:
            return
        session.execute(
            update(table)
            .where(
                table.c.id == ident,
                table.c.version <= version if same_version else table.c.version < version,
            )
            .values(**values, version=version)
        )

    return mirror


TARGET_KINDS = (
    TargetKind(
        "customer",
        _load_customer,
        customer_state,
        CUSTOMER_FIELDS,
        customer_of=_customer_of_customer,
    ),
    TargetKind(
        "account",
        _load_account,
        account_state,
        ACCOUNT_FIELDS,
        mirror=_mirror(Account, ("status", "blocked_reason", "balance_minor"), same_version=True),
        customer_of=_customer_of_account,
    ),
    TargetKind(
        "payment",
        _load_payment,
        payment_state,
        PAYMENT_FIELDS,
        mirror=_mirror(Payment, ("status", "reversed_minor")),
        customer_of=_customer_of_payment,
    ),
)
