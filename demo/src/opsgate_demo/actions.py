"""The demo's actions. Each is a plain handler plus its declaration; the control layer does
permission, validation, target lookup, transactions and audit (docs/adding-an-action.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from opsgate.plugin import (
    ActionContext,
    ActionSpec,
    Change,
    DomainError,
    Outcome,
    Payload,
    RiskClass,
    new_id,
)
from opsgate_demo import kyc
from opsgate_demo.models import Account, AccountStatus, Customer, CustomerStatus, Note
from opsgate_demo.targets import account_state, customer_state

# --- customer.add_note -------------------------------------------------------------------


class AddNote(Payload):
    text: Annotated[str, Field(min_length=1, max_length=4000, description="The note, as written")]


def preview_note(ctx: ActionContext, customer: Customer, payload: AddNote) -> Change:
    return Change({"notes_added": 0}, {"notes_added": 1, "text_length": len(payload.text)})


def add_note(ctx: ActionContext, customer: Customer, payload: AddNote) -> Outcome:
    note = Note(
        id=new_id("not"),
        customer_id=customer.id,
        author_id=ctx.actor.id,
        author_name=ctx.actor.name,
        text=payload.text,
        created_at=ctx.now,
    )
    ctx.session.add(note)
    return Outcome({"note_id": note.id, "customer_id": customer.id})


# --- account.block / account.unblock -----------------------------------------------------

BlockReason = Literal[
    "fraud_suspected", "customer_request", "compliance_hold", "chargeback_risk", "lost_or_stolen"
]


class BlockAccount(Payload):
    reason_code: BlockReason = Field(description="Why the account is blocked")


def _check_blockable(account: Account) -> None:
    if account.status == AccountStatus.BLOCKED:
        raise DomainError(
            "account_already_blocked",
            f"Account {account.id} is already blocked ({account.blocked_reason}).",
        )


def _check_unblockable(account: Account) -> None:
    if account.status != AccountStatus.BLOCKED:
        raise DomainError("account_not_blocked", f"Account {account.id} is not blocked.")


def preview_block(ctx: ActionContext, account: Account, payload: BlockAccount) -> Change:
    _check_blockable(account)
    before = account_state(account)
    return Change(before, before | {"status": "blocked", "blocked_reason": payload.reason_code})


def block_account(ctx: ActionContext, account: Account, payload: BlockAccount) -> Outcome:
    _check_blockable(account)
    account.status = AccountStatus.BLOCKED
    account.blocked_reason = payload.reason_code
    return Outcome({"account_id": account.id, "status": account.status})


class UnblockAccount(Payload):
    pass


def preview_unblock(ctx: ActionContext, account: Account, payload: UnblockAccount) -> Change:
    _check_unblockable(account)
    before = account_state(account)
    return Change(before, before | {"status": "active", "blocked_reason": None})


def unblock_account(ctx: ActionContext, account: Account, payload: UnblockAccount) -> Outcome:
    _check_unblockable(account)
    account.status = AccountStatus.ACTIVE
    account.blocked_reason = None
    return Outcome({"account_id": account.id, "status": account.status})


# --- kyc.rerun_check ---------------------------------------------------------------------


class RerunKyc(Payload):
    pass


def _check_screenable(customer: Customer) -> None:
    if customer.status == CustomerStatus.CLOSED:
        raise DomainError("customer_closed", f"Customer {customer.id} is closed.")


def preview_kyc(ctx: ActionContext, customer: Customer, payload: RerunKyc) -> Change:
    _check_screenable(customer)
    before = customer_state(customer)
    outcome = kyc.screen(customer)
    return Change(before, before | {"kyc_status": outcome.status, "kyc_checked_at": "(on run)"})


def rerun_kyc(ctx: ActionContext, customer: Customer, payload: RerunKyc) -> Outcome:
    _check_screenable(customer)
    screening = kyc.screen(customer)
    customer.kyc_status = screening.status
    customer.kyc_checked_at = ctx.now
    customer.kyc_check_count += 1
    return Outcome(
        {"customer_id": customer.id, "kyc_status": screening.status, "findings": screening.findings}
    )


# --- customer.view_pii --------------------------------------------------------------------


class ViewPii(Payload):
    pass


def view_pii(ctx: ActionContext, customer: Customer, payload: ViewPii) -> Outcome:
    # The audit record says that PII was revealed and which fields, never the values.
    revealed = {"name": customer.name, "email": customer.email, "phone": customer.phone}
    return Outcome(revealed, audit={"revealed_fields": sorted(revealed)})


def preview_view_pii(ctx: ActionContext, customer: Customer, payload: ViewPii) -> Change:
    return Change({"pii_visible": False}, {"pii_visible": True})


ACTIONS = (
    ActionSpec(
        name="customer.add_note",
        label="Add a note",
        description="Attach an internal note to the customer's record.",
        risk=RiskClass.WRITE,
        target_kind="customer",
        payload_model=AddNote,
        handler=add_note,
        preview=preview_note,
    ),
    ActionSpec(
        name="account.block",
        label="Block account",
        description="Stop all money movement on the account until it is unblocked.",
        risk=RiskClass.WRITE,
        target_kind="account",
        payload_model=BlockAccount,
        handler=block_account,
        preview=preview_block,
    ),
    ActionSpec(
        name="account.unblock",
        label="Unblock account",
        description="Allow money movement on a blocked account again.",
        risk=RiskClass.WRITE,
        target_kind="account",
        payload_model=UnblockAccount,
        handler=unblock_account,
        preview=preview_unblock,
    ),
    ActionSpec(
        name="kyc.rerun_check",
        label="Re-run KYC check",
        description="Screen the customer again against the identity and watchlist rules.",
        risk=RiskClass.WRITE,
        target_kind="customer",
        payload_model=RerunKyc,
        handler=rerun_kyc,
        preview=preview_kyc,
    ),
    ActionSpec(
        name="customer.view_pii",
        label="Reveal personal data",
        description="Show the customer's name, email and phone in full. Every reveal is audited.",
        risk=RiskClass.READ,
        target_kind="customer",
        payload_model=ViewPii,
        handler=view_pii,
        preview=preview_view_pii,
    ),
)
