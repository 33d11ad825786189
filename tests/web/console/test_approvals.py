"""The approvals inbox and detail: what a reviewer needs, no approve button on one's own
request (and a forged approve refused), re-authentication before money moves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from opsgate.core.clock import FrozenClock
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import PASSWORD, Browser, audit_rows, key_of


def request_unblock(browser: Callable[..., Browser], world: World, who: str = "rita") -> str:
    """Block an account (alice), then ask for its unblock (`who`); return the approval ID."""
    account = world.account(1)
    alice = browser("alice")
    page = alice.get(f"/console/actions/account.block?target=account:{account}")
    blocked = alice.post(
        "/console/actions/account.block",
        {
            "target": f"account:{account}",
            "payload.reason_code": "fraud_suspected",
            "reason": "odd card use",
            "idempotency_key": key_of(page.text),
        },
    )
    assert "Block account: executed." in blocked.text, blocked.text
    requester = browser(who)
    page = requester.get(f"/console/actions/account.unblock?target=account:{account}")
    held = requester.post(
        "/console/actions/account.unblock",
        {
            "target": f"account:{account}",
            "reason": "customer verified <by phone>",
            "idempotency_key": key_of(page.text),
        },
    )
    assert "Waiting for approval" in held.text, held.text
    services = requester_services(requester)
    [row] = audit_rows(services, action="account.unblock", result="approval_requested")
    return str(row.approval_id)


def requester_services(b: Browser) -> Services:
    services: Services = b.client.app.state.services  # type: ignore[attr-defined]
    return services


def request_reversal(b: Browser, world: World, amount: str = "150.00") -> str:
    """Ask for a reversal big enough to need one approval; return the approval ID."""
    payment = next(
        p
        for p in world.summary.payments
        if p["currency"] == "USD" and 20_000 < p["amount_minor"] < 400_000
    )
    page = b.get(f"/console/actions/payment.reverse?target=payment:{payment['id']}")
    held = b.post(
        "/console/actions/payment.reverse",
        {
            "target": f"payment:{payment['id']}",
            "payload.amount_minor": amount,
            "payload.reason_code": "duplicate_charge",
            "reason": "charged twice",
            "idempotency_key": key_of(page.text),
        },
    )
    assert "Waiting for approval" in held.text, held.text
    services = requester_services(b)
    rows = audit_rows(services, action="payment.reverse", result="approval_requested")
    return str(rows[-1].approval_id)


def test_detail_shows_what_a_reviewer_needs(browser: Callable[..., Browser], world: World) -> None:
    approval_id = request_unblock(browser, world)
    olga = browser("olga")
    inbox = olga.get("/console/approvals")
    assert f"/console/approvals/{approval_id}" in inbox.text
    home = olga.get("/console")
    assert f"/console/approvals/{approval_id}" in home.text  # waiting for her
    page = olga.get(f"/console/approvals/{approval_id}")
    assert page.status_code == 200
    text = page.text
    assert "Unblock account" in text
    assert "Rita Chen" in text
    assert "customer verified &lt;by phone&gt;" in text
    assert '<tr class="changed">' in text  # status: blocked → active
    assert "(until " in text
    assert 'value="approve"' in text and 'value="reject"' in text
    assert "Target when requested" in text and "Target now" in text


def test_the_requester_gets_no_approve_button_and_a_forged_approve_is_refused(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    approval_id = request_unblock(browser, world)
    rita = browser("rita")  # a reviewer, but the requester
    page = rita.get(f"/console/approvals/{approval_id}")
    assert page.status_code == 200
    assert 'value="approve"' not in page.text
    assert "someone else must decide it" in page.text
    assert "Cancel the request" in page.text
    forged = rita.post(
        f"/console/approvals/{approval_id}/decide", {"decision": "approve", "comment": "me"}
    )
    assert forged.status_code == 403
    assert "You cannot decide this request" in forged.text
    assert "You cannot decide a request you made." in forged.text
    denied = [r for r in audit_rows(services, approval_id=approval_id) if r.result == "denied"]
    assert [r.error_code for r in denied] == ["self_approval"]
    assert "pending" in rita.get(f"/console/approvals/{approval_id}").text


def test_a_reviewer_approves_and_it_executes(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    approval_id = request_unblock(browser, world)
    olga = browser("olga")
    done = olga.post(
        f"/console/approvals/{approval_id}/decide",
        {"decision": "approve", "comment": "checked the recording"},
    )
    assert done.status_code == 200, done.text
    assert "Approved and executed" in done.text
    assert "Execution request ID" in done.text
    results = [r.result for r in audit_rows(services, approval_id=approval_id)]
    assert results[-2:] == ["approved", "succeeded"]
    assert 'value="approve"' not in done.text  # decided: no more buttons


def test_reject_needs_a_comment_and_says_so(browser: Callable[..., Browser], world: World) -> None:
    approval_id = request_unblock(browser, world)
    olga = browser("olga")
    refused = olga.post(f"/console/approvals/{approval_id}/decide", {"decision": "reject"})
    assert refused.status_code == 422
    assert "A rejection needs a comment saying why." in refused.text
    rejected = olga.post(
        f"/console/approvals/{approval_id}/decide", {"decision": "reject", "comment": "no proof"}
    )
    assert "Rejected" in rejected.text


def test_the_requester_may_cancel(browser: Callable[..., Browser], world: World) -> None:
    approval_id = request_unblock(browser, world)
    cancelled = browser("rita").post(f"/console/approvals/{approval_id}/cancel")
    assert cancelled.status_code == 200
    assert "Cancelled" in cancelled.text


def test_others_cannot_see_a_request(browser: Callable[..., Browser], world: World) -> None:
    approval_id = request_unblock(browser, world)
    hidden = browser("bob").get(f"/console/approvals/{approval_id}")
    assert hidden.status_code == 403
    assert "You may neither approve this request nor read the audit trail." in hidden.text


def test_money_moving_approval_needs_the_password_again_after_15_minutes(
    browser: Callable[..., Browser], services: Services, world: World, clock: FrozenClock
) -> None:
    approval_id = request_reversal(browser("alice"), world)
    olga = browser("olga")
    fresh = olga.get(f"/console/approvals/{approval_id}")
    assert 'name="password"' not in fresh.text  # signed in just now
    clock.advance(timedelta(minutes=16))
    stale = olga.get(f"/console/approvals/{approval_id}")
    assert 'name="password"' in stale.text
    assert "confirm it is you" in stale.text
    without = olga.post(f"/console/approvals/{approval_id}/decide", {"decision": "approve"})
    assert without.status_code == 403
    assert "Password not confirmed" in without.text
    wrong = olga.post(
        f"/console/approvals/{approval_id}/decide",
        {"decision": "approve", "password": "not my password at all"},
    )
    assert "Password not confirmed" in wrong.text
    assert "pending" in wrong.text
    reauth = audit_rows(services, action="auth.reauth")
    assert [r.result for r in reauth] == ["denied", "denied"]
    assert reauth[0].actor_id == world.user_ids["olga"]
    done = olga.post(
        f"/console/approvals/{approval_id}/decide",
        {"decision": "approve", "password": PASSWORD, "comment": "ok"},
    )
    assert "Approved and executed" in done.text, done.text
    assert audit_rows(services, action="auth.reauth", result="succeeded")
    # The fresh proof counts for the next 15 minutes.
    again = request_reversal(browser("bob"), world, amount="101.00")
    assert 'name="password"' not in olga.get(f"/console/approvals/{again}").text


def test_reauthentication_is_not_asked_for_other_actions(
    browser: Callable[..., Browser], world: World, clock: FrozenClock
) -> None:
    approval_id = request_unblock(browser, world)
    olga = browser("olga")
    clock.advance(timedelta(minutes=20))
    page = olga.get(f"/console/approvals/{approval_id}")
    assert 'name="password"' not in page.text
    done = olga.post(f"/console/approvals/{approval_id}/decide", {"decision": "approve"})
    assert "Approved and executed" in done.text


def test_near_duplicates_are_flagged_to_the_reviewer(
    browser: Callable[..., Browser], world: World
) -> None:
    alice = browser("alice")
    first = request_reversal(alice, world)
    page = alice.get(f"/console/approvals/{first}")
    assert "Possible duplicate" not in page.text
    payment = next(
        p
        for p in world.summary.payments
        if p["currency"] == "USD" and 20_000 < p["amount_minor"] < 400_000
    )
    form = alice.get(f"/console/actions/payment.reverse?target=payment:{payment['id']}")
    second = alice.post(
        "/console/actions/payment.reverse",
        {
            "target": f"payment:{payment['id']}",
            "payload.amount_minor": "150.00",
            "payload.reason_code": "duplicate_charge",
            "reason": "charged twice (again?)",
            "idempotency_key": key_of(form.text),
        },
    )
    assert "Waiting for approval" in second.text
    approval_ids = [
        r.approval_id
        for r in audit_rows(requester_services(alice), action="payment.reverse")
        if r.result == "approval_requested"
    ]
    detail = browser("olga").get(f"/console/approvals/{approval_ids[-1]}")
    assert "Possible duplicate" in detail.text
    assert f"/console/approvals/{first}" in detail.text
