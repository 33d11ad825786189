"""A reversal above the approval threshold waits for a second person, who approves it from
the inbox; the requester can neither see an approve button nor forge one."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from opsgate.db.engine import Database
from opsgate.web.console.formatting import money
from tests.browser import records, steps
from tests.browser.conftest import BrowserSession, Shots
from tests.browser.steps import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]

# Above 100.00 one approval is needed, above 5,000.00 two: 150.00 needs exactly one.
AMOUNT = "150.00"
AMOUNT_MINOR = 15_000


@pytest.fixture
def case(db: Database) -> records.PaymentCase:
    return records.payment_case(db, more_than=AMOUNT_MINOR, at_most=500_000)


def alice_requests_reversal(page: Page, case: records.PaymentCase) -> str:
    """Alice asks for the reversal; the approval request's ID."""
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    steps.request_reversal(page, case.payment_id, AMOUNT, "Ticket 812: customer disputes")
    expect(steps.outcome(page)).to_contain_text("Waiting for approval")
    approval_id = page.locator("#outcome-id-1").inner_text().strip()
    assert approval_id.startswith("apr_"), approval_id
    return approval_id


def test_reversal_above_the_threshold_waits_for_approval(
    page: Page,
    db: Database,
    case: records.PaymentCase,
    shots: Shots,
    browser_session: BrowserSession,
) -> None:
    balance = records.account_balance(db, case.account_id)
    approval_id = alice_requests_reversal(page, case)
    shots.take(page, "pending")

    banner = steps.outcome(page)
    expect(banner).to_contain_text("Reverse payment: held for a second person's approval.")
    expect(banner).to_contain_text(
        re.compile(r"It needs one approval from: (Ops lead, Risk reviewer|Risk reviewer, Ops lead)")
    )
    expect(banner).to_contain_text(re.compile(r"by \d{4}-\d\d-\d\d \d\d:\d\d UTC \(2[34] h"))
    expect(banner).to_contain_text("Nothing has changed yet.")
    request_id = steps.outcome_request_id(page)
    assert "confirm: Reverse payment: this moves money. Submit?" in browser_session.dialogs

    [approval] = records.approvals(db, f"payment:{case.payment_id}")
    assert (approval.id, approval.status, approval.quorum) == (approval_id, "pending", 1)
    assert approval.request_id == request_id
    assert approval.payload == {"amount_minor": AMOUNT_MINOR, "reason_code": "customer_dispute"}
    assert records.reversals(db, case.payment_id) == []
    assert records.account_balance(db, case.account_id) == balance

    # The request shows under "My requests" on the home page, pending, with its time left.
    page.get_by_role("link", name="Home").click()
    my_requests = page.get_by_role("region", name="My requests")
    mine = my_requests.get_by_role("row").filter(has_text=f"payment:{case.payment_id}")
    expect(mine).to_contain_text("Pending")
    expect(mine).to_contain_text(re.compile(r"2[34] h"))
    recent = page.get_by_role("region", name="My recent actions").get_by_role("row")
    expect(recent.filter(has_text=request_id)).to_contain_text("Approval requested")
    shots.take(page, "home")


def test_reviewer_approves_from_the_inbox_and_the_payment_is_reversed_once(
    page: Page,
    new_page: Callable[..., Page],
    db: Database,
    case: records.PaymentCase,
    shots: Shots,
) -> None:
    balance = records.account_balance(db, case.account_id)
    approval_id = alice_requests_reversal(page, case)

    rita = new_page()
    steps.sign_in(rita, "rita")
    waiting = rita.get_by_role("region", name=re.compile("Waiting for you"))
    expect(waiting.get_by_role("row").filter(has_text=case.payment_id)).to_contain_text(
        "Alice Moreno"
    )
    shots.take(rita, "rita-home")

    rita.get_by_role("navigation").get_by_role("link", name="Approvals").click()
    row = rita.get_by_role("row").filter(has_text=f"payment:{case.payment_id}")
    expect(row).to_contain_text("Alice Moreno")
    expect(row).to_contain_text("Ticket 812: customer disputes")
    expect(row).to_contain_text("Pending")
    shots.take(rita, "inbox")
    row.get_by_role("link", name="Reverse payment").click()
    rita.wait_for_url(re.compile(rf"/console/approvals/{approval_id}$"))
    expect(rita.get_by_text("Alice Moreno, ")).to_be_visible()
    changed = rita.locator("table.diff tr.changed")
    reversed_row = changed.filter(has=rita.get_by_role("rowheader", name=re.compile("^Reversed")))
    expect(reversed_row).to_contain_text(money(AMOUNT_MINOR, case.currency))
    shots.take(rita, "detail")

    rita.get_by_label("Comment").fill("Checked the dispute evidence.")
    rita.get_by_role("button", name="Approve").click()
    banner = steps.outcome(rita)
    expect(banner).to_contain_text("Approved and executed")
    expect(banner).to_contain_text("approved by quorum (1 of 1)")
    execution_id = rita.locator("#outcome-id-1").inner_text().strip()
    expect(rita.get_by_role("button", name="Approve")).to_have_count(0)
    shots.take(rita, "approved")

    # The customer's payment shows the reversal exactly once; the balance moved once.
    rita.get_by_role("link", name="Home").click()
    steps.search(rita, case.payment_id)
    rita.get_by_role("link", name=case.payment_id).click()
    rita.wait_for_url(re.compile(rf"/console/customers/{case.customer_id}"))
    payment_row = rita.locator(f"#payment-{case.payment_id}")
    expect(payment_row).to_contain_text(money(AMOUNT_MINOR, case.currency))
    expect(payment_row).to_contain_text("Partially reversed")
    reversal_rows = rita.locator("tr.sub").filter(has_text="reversal")
    expect(reversal_rows).to_have_count(1)
    expect(reversal_rows).to_contain_text(execution_id)
    shots.take(rita, "customer")

    [(amount, reversal_request)] = records.reversals(db, case.payment_id)
    assert (amount, reversal_request) == (AMOUNT_MINOR, execution_id)
    assert records.reversed_minor(db, case.payment_id) == AMOUNT_MINOR
    after = records.account_balance(db, case.account_id)
    assert abs(after - balance) == AMOUNT_MINOR
    assert records.ledger_balance(db, case.account_id) == after
    assert records.ledger_total(db) == 0
    account_row = rita.locator(f"#account-{case.account_id}")
    expect(account_row).to_contain_text(money(after, case.currency))
    [approval] = records.approvals(db, f"payment:{case.payment_id}")
    assert approval.status == "succeeded"


def test_requester_sees_no_approve_button_and_a_forged_approval_is_refused(
    page: Page, db: Database, case: records.PaymentCase, shots: Shots
) -> None:
    approval_id = alice_requests_reversal(page, case)
    page.get_by_role("link", name="Open the approval request").click()
    page.wait_for_url(re.compile(rf"/console/approvals/{approval_id}$"))
    expect(
        page.get_by_text("You made this request, so someone else must decide it.")
    ).to_be_visible()
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("button", name="Reject")).to_have_count(0)
    shots.take(page, "own-request")

    # A hand-made approval with alice's own session and a valid token from the page's forms.
    forged = page.request.post(
        f"/console/approvals/{approval_id}/decide",
        form={"csrf_token": steps.csrf_token(page), "decision": "approve", "comment": "me"},
        max_redirects=0,
    )
    assert forged.status == 403, forged.text()
    assert "You cannot decide this request" in forged.text()
    forged_request_id = forged.headers["x-request-id"]

    [approval] = records.approvals(db, f"payment:{case.payment_id}")
    assert approval.status == "pending"
    assert approval.decisions == []
    assert records.reversals(db, case.payment_id) == []
    assert records.audit_results(db, forged_request_id) == [("payment.reverse", "denied")]

    page.reload()
    expect(page.get_by_text("No decisions yet.")).to_be_visible()
