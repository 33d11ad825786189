"""Money-moving actions: reversing a posted payment and adjusting a balance.

Each posts exactly one balanced ledger transaction. The domain refuses a duplicate effect
whatever the idempotency keys say: the payment row is locked by the control layer, the
handler refuses reversals beyond the payment, the database's CHECK constraint refuses them
too, and a ledger reference can be posted only once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from sqlalchemy import select

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
from opsgate_demo import ledger
from opsgate_demo.models import (
    Account,
    AccountKind,
    AccountStatus,
    Payment,
    PaymentDirection,
    PaymentReversal,
    PaymentStatus,
)
from opsgate_demo.targets import account_state, payment_state

MAX_AMOUNT_MINOR = 100_000_000_000  # 1 billion in major units: a typo guard, not a limit

ReversalReason = Literal[
    "customer_dispute", "duplicate_charge", "fraud", "merchant_error", "goodwill"
]


def _account(ctx: ActionContext, account_id: str, *, lock: bool = True) -> Account:
    stmt = select(Account).where(Account.id == account_id)
    account = ctx.session.scalars(stmt.with_for_update() if lock else stmt).one()
    return account


def _refuse_if_blocked(account: Account) -> None:
    if account.status == AccountStatus.BLOCKED:
        raise DomainError(
            "account_blocked",
            f"Account {account.id} is blocked ({account.blocked_reason}); no money may move.",
        )


def _system_account(ctx: ActionContext, purpose: str, currency: str) -> Account:
    return ctx.session.scalars(
        select(Account).where(
            Account.kind == AccountKind.SYSTEM, Account.name == f"{purpose}:{currency}"
        )
    ).one()


# --- payment.reverse ---------------------------------------------------------------------


class ReversePayment(Payload):
    amount_minor: Annotated[
        int, Field(gt=0, le=MAX_AMOUNT_MINOR, description="Amount to reverse, in minor units")
    ]
    reason_code: ReversalReason = Field(description="Why the payment is reversed")


def _check_reversal(payment: Payment, amount: int) -> None:
    remaining = payment.amount_minor - payment.reversed_minor
    if amount > remaining:
        raise DomainError(
            "reversal_exceeds_payment",
            f"Only {remaining} of {payment.amount_minor} {payment.currency} minor units of "
            f"{payment.id} remain to reverse; {amount} were asked.",
        )


def _reversed_state(payment: Payment, amount: int) -> dict[str, object]:
    total = payment.reversed_minor + amount
    status = (
        PaymentStatus.REVERSED
        if total == payment.amount_minor
        else PaymentStatus.PARTIALLY_REVERSED
    )
    return {"reversed_minor": total, "status": status.value}


def preview_reversal(ctx: ActionContext, payment: Payment, payload: ReversePayment) -> Change:
    _check_reversal(payment, payload.amount_minor)
    account = _account(ctx, payment.account_id, lock=False)
    _refuse_if_blocked(account)
    sign = -1 if payment.direction == PaymentDirection.INBOUND else 1
    before = payment_state(payment) | {"account_balance_minor": account.balance_minor}
    after = (
        before
        | _reversed_state(payment, payload.amount_minor)
        | {
            "account_balance_minor": account.balance_minor + sign * payload.amount_minor,
            "version": payment.version + 1,
        }
    )
    return Change(before, after)


def reverse_payment(ctx: ActionContext, payment: Payment, payload: ReversePayment) -> Outcome:
    amount = payload.amount_minor
    _check_reversal(payment, amount)
    account = _account(ctx, payment.account_id)
    _refuse_if_blocked(account)
    settlement = _system_account(ctx, "settlement", payment.currency)
    # An inbound payment credited the customer: reversing it debits them, and vice versa.
    sign = -1 if payment.direction == PaymentDirection.INBOUND else 1
    txn = ledger.post(
        ctx.session,
        [
            ledger.Leg(account.id, sign * amount, payment.currency),
            ledger.Leg(settlement.id, -sign * amount, payment.currency),
        ],
        kind="reversal",
        memo=f"reversal of {payment.id}: {payload.reason_code}",
        now=ctx.now,
        reference=f"reversal:{ctx.request_id}",
    )
    reversal = PaymentReversal(
        id=new_id("rev"),
        payment_id=payment.id,
        amount_minor=amount,
        reason_code=payload.reason_code,
        ledger_transaction_id=txn.id,
        actor_id=ctx.actor.id,
        request_id=ctx.request_id,
        created_at=ctx.now,
    )
    ctx.session.add(reversal)
    state = _reversed_state(payment, amount)
    payment.reversed_minor = int(state["reversed_minor"])  # type: ignore[call-overload]
    payment.status = str(state["status"])
    return Outcome(
        {
            "reversal_id": reversal.id,
            "payment_id": payment.id,
            "amount_minor": amount,
            "currency": payment.currency,
            "reversed_minor": payment.reversed_minor,
            "remaining_minor": payment.amount_minor - payment.reversed_minor,
            "ledger_transaction_id": txn.id,
        }
    )


# --- account.adjust_balance --------------------------------------------------------------


class AdjustBalance(Payload):
    amount_minor: Annotated[
        int,
        Field(
            ge=-MAX_AMOUNT_MINOR,
            le=MAX_AMOUNT_MINOR,
            description="Signed amount in minor units: positive credits the customer",
        ),
    ]
    memo: Annotated[str, Field(min_length=3, max_length=500, description="What this corrects")]


def _check_adjustment(account: Account, payload: AdjustBalance) -> None:
    if payload.amount_minor == 0:
        raise DomainError("zero_adjustment", "An adjustment of zero changes nothing.")
    _refuse_if_blocked(account)


def preview_adjustment(ctx: ActionContext, account: Account, payload: AdjustBalance) -> Change:
    _check_adjustment(account, payload)
    before = account_state(account)
    return Change(before, before | {"balance_minor": account.balance_minor + payload.amount_minor})


def adjust_balance(ctx: ActionContext, account: Account, payload: AdjustBalance) -> Outcome:
    _check_adjustment(account, payload)
    adjustments = _system_account(ctx, "adjustments", account.currency)
    txn = ledger.post(
        ctx.session,
        [
            ledger.Leg(account.id, payload.amount_minor, account.currency),
            ledger.Leg(adjustments.id, -payload.amount_minor, account.currency),
        ],
        kind="adjustment",
        memo=payload.memo,
        now=ctx.now,
        reference=f"adjustment:{ctx.request_id}",
    )
    ctx.session.refresh(account, ["balance_minor"])
    return Outcome(
        {
            "account_id": account.id,
            "amount_minor": payload.amount_minor,
            "currency": account.currency,
            "balance_minor": account.balance_minor,
            "ledger_transaction_id": txn.id,
        }
    )


MONEY_ACTIONS = (
    ActionSpec(
        name="payment.reverse",
        label="Reverse payment",
        description="Reverse all or part of a posted payment with a new ledger transaction.",
        risk=RiskClass.MONEY_MOVING,
        target_kind="payment",
        payload_model=ReversePayment,
        handler=reverse_payment,
        preview=preview_reversal,
    ),
    ActionSpec(
        name="account.adjust_balance",
        label="Adjust balance",
        description="Post a correcting ledger transaction against the adjustments account.",
        risk=RiskClass.MONEY_MOVING,
        target_kind="account",
        payload_model=AdjustBalance,
        handler=adjust_balance,
        preview=preview_adjustment,
    ),
)
