"""Action forms: rendered from the payload schema, offered only where the policy allows,
submitted through the gateway once per form, every outcome said plainly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from opsgate.web.services import Services
from opsgate_demo.models import Note, Payment, PaymentReversal
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows, key_of


def small_payment(world: World, below: int = 10_000) -> dict[str, Any]:
    """A USD payment of more than 1.00 and at most `below` minor units."""
    return next(
        p
        for p in world.summary.payments
        if p["currency"] == "USD" and 100 < p["amount_minor"] <= below
    )


def reverse_form(b: Browser, payment_id: str, amount: str) -> dict[str, str]:
    page = b.get(f"/console/actions/payment.reverse?target=payment:{payment_id}")
    assert page.status_code == 200, page.text
    return {
        "target": f"payment:{payment_id}",
        "payload.amount_minor": amount,
        "payload.reason_code": "customer_dispute",
        "reason": "ticket 77",
        "idempotency_key": key_of(page.text),
    }


def test_the_form_follows_the_payload_schema(browser: Callable[..., Browser], world: World) -> None:
    page = browser("alice").get(
        f"/console/actions/payment.reverse?target=payment:{world.payment()}"
    )
    assert page.status_code == 200
    assert '<label for="f-amount-minor">Amount (' in page.text  # money, in the payment's currency
    assert 'name="payload.amount_minor"' in page.text
    assert '<select id="f-reason-code" name="payload.reason_code" required' in page.text
    assert '<option value="duplicate_charge">Duplicate charge</option>' in page.text
    assert 'name="reason"' in page.text
    assert 'name="idempotency_key" value="con_' in page.text
    assert "this moves money" in page.text


def test_actions_the_viewer_may_not_start_are_not_offered(
    browser: Callable[..., Browser], world: World
) -> None:
    account = world.summary.accounts[0]
    alice = browser("alice").get(f"/console/customers/{account['customer_id']}").text
    assert "Adjust balance" not in alice  # support agents may not
    assert "Block account" in alice
    form = browser("alice").get(
        f"/console/actions/account.adjust_balance?target=account:{account['id']}"
    )
    assert "Your roles may not start this action" in form.text
    assert 'name="idempotency_key"' not in form.text


def test_a_forged_post_for_a_forbidden_action_is_refused_by_the_gateway(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    response = b.post(
        "/console/actions/account.adjust_balance",
        {
            "target": f"account:{world.account()}",
            "payload.amount_minor": "10.00",
            "payload.memo": "goodwill",
            "reason": "complaint",
            "idempotency_key": "con_forged",
        },
    )
    assert response.status_code == 403
    assert "Not permitted" in response.text
    assert "it needs one of: ops_lead, risk_reviewer" in response.text
    assert "What to do next:" in response.text
    [denied] = audit_rows(services, action="account.adjust_balance")
    assert denied.result == "denied"
    assert denied.request_id in response.text


def test_submitting_the_same_form_twice_adds_one_note(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    key = key_of(b.get(f"/console/customers/{world.customer()}").text)
    form = {
        "target": f"customer:{world.customer()}",
        "payload.text": "Customer called twice",
        "reason": "ticket 9",
        "idempotency_key": key,
    }
    first = b.post("/console/actions/customer.add_note", form)
    second = b.post("/console/actions/customer.add_note", form)
    assert first.status_code == second.status_code == 200
    assert "Done" in first.text and "Add a note: executed." in first.text
    assert "Already submitted" in second.text and "It did not run again." in second.text
    with services.db.reading() as session:
        notes = session.scalar(select(func.count()).where(Note.customer_id == world.customer()))
    assert notes == 1
    [done] = audit_rows(services, action="customer.add_note", result="succeeded")
    assert done.request_id in first.text
    assert done.request_id in second.text  # the replay quotes the first request's ID
    [again] = audit_rows(services, action="customer.add_note", result="replayed")
    assert again.outcome is not None and again.outcome["original_request_id"] == done.request_id


def test_money_moves_once_when_the_form_is_posted_twice(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    payment = small_payment(world)
    b = browser("alice")
    form = reverse_form(b, payment["id"], "1.00")
    first = b.post("/console/actions/payment.reverse", form)
    second = b.post("/console/actions/payment.reverse", form)
    assert first.status_code == 200, first.text
    assert "Reverse payment: executed." in first.text
    assert "1.00 USD" in first.text
    assert "It did not run again." in second.text
    with services.db.reading() as session:
        reversals = list(
            session.scalars(
                select(PaymentReversal).where(PaymentReversal.payment_id == payment["id"])
            )
        )
        reversed_minor = session.scalar(
            select(Payment.reversed_minor).where(Payment.id == payment["id"])
        )
    assert [r.amount_minor for r in reversals] == [100]
    assert reversed_minor == 100
    [audited] = audit_rows(services, action="payment.reverse", result="succeeded")
    assert audited.parameters == {"amount_minor": 100, "reason_code": "customer_dispute"}
    assert audited.credential_id is not None and audited.credential_id.startswith("ses_")


def test_invalid_values_come_back_next_to_their_fields(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    payment = small_payment(world)
    b = browser("alice")
    form = reverse_form(b, payment["id"], "1.005") | {"payload.reason_code": ""}
    response = b.post("/console/actions/payment.reverse", form)
    assert response.status_code == 422
    assert "Some values need correcting" in response.text
    assert 'id="f-amount-minor-error">Enter an amount in USD with at most 2 decimal places' in (
        response.text
    )
    assert 'id="f-reason-code-error">Required.' in response.text
    assert 'aria-invalid="true"' in response.text
    assert 'value="1.005"' in response.text  # what was typed is kept
    assert audit_rows(services, action="payment.reverse", result="invalid")
    no_reason = b.post(
        "/console/actions/payment.reverse", reverse_form(b, payment["id"], "1") | {"reason": ""}
    )
    assert no_reason.status_code == 422
    assert 'id="reason-payment-reverse-error">' in no_reason.text


def test_a_domain_refusal_says_why_and_changes_nothing(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    payment = small_payment(world)
    b = browser("alice")
    too_much = f"{payment['amount_minor'] / 100 + 1:.2f}"
    response = b.post("/console/actions/payment.reverse", reverse_form(b, payment["id"], too_much))
    assert response.status_code in (409, 200), response.text
    if "Waiting for approval" in response.text:  # above 100.00 the preview refuses it first
        raise AssertionError("expected the domain to refuse the over-reversal")
    assert "Not done" in response.text
    assert "remain to reverse" in response.text
    assert "Nothing was changed." in response.text


def test_a_held_action_says_by_whom_and_until_when(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("rita")
    account = world.account()
    page = b.get(f"/console/actions/account.adjust_balance?target=account:{account}")
    response = b.post(
        "/console/actions/account.adjust_balance",
        {
            "target": f"account:{account}",
            "payload.amount_minor": "12.50",
            "payload.memo": "fee refund",
            "reason": "ticket 5",
            "idempotency_key": key_of(page.text),
        },
    )
    assert response.status_code == 200, response.text
    assert "Waiting for approval" in response.text
    assert "It needs one approval from: Ops lead, Risk reviewer" in response.text
    assert "(1 d 0 h left)" in response.text
    [held] = audit_rows(services, action="account.adjust_balance")
    assert held.result == "approval_requested"
    assert held.parameters == {"amount_minor": 1250, "memo": "fee refund"}
    assert f"/console/approvals/{held.approval_id}" in response.text
    home = b.get("/console").text
    assert f"/console/approvals/{held.approval_id}" in home  # under My requests


def test_unknown_actions_and_targets_are_plain_404s(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    assert b.get(f"/console/actions/no.such?target=customer:{world.customer()}").status_code == 404
    assert b.get("/console/actions/account.block?target=account:acc_missing").status_code == 404
    posted = b.post("/console/actions/no.such", {"target": "customer:x", "reason": "r"})
    assert posted.status_code == 404
    assert "There is no action named" in posted.text
    assert audit_rows(services, action="no.such", result="invalid")
