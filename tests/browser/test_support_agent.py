"""A support agent finds a customer from the home page and blocks one of their accounts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from opsgate.db.engine import Database
from tests.browser import records, steps
from tests.browser.conftest import Shots
from tests.browser.steps import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]


def test_agent_finds_a_customer_by_email_and_blocks_an_account(
    page: Page, db: Database, shots: Shots
) -> None:
    case = records.account_case(db)
    steps.sign_in(page, "alice")
    expect(page.get_by_text("Alice Moreno")).to_be_visible()
    shots.take(page, "home")

    steps.open_customer(page, case.customer_email, case.customer_id)
    account_row = page.locator(f"#account-{case.account_id}")
    expect(account_row).to_contain_text("Active")
    shots.take(page, "customer")

    account_row.get_by_role("link", name="Block account").click()
    page.wait_for_url(re.compile(r"/console/actions/account\.block\?target=account:"))
    page.get_by_label("Reason code").select_option("fraud_suspected")
    page.get_by_role("textbox", name="Reason (required)").fill("Ticket 4711: card used abroad")
    shots.take(page, "form")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Block account").click()

    banner = steps.outcome(page)
    expect(banner).to_contain_text("Done")
    expect(banner).to_contain_text("Block account: executed.")
    expect(banner).to_contain_text("blocked")
    request_id = steps.outcome_request_id(page)
    assert answer.value.status == 200
    assert answer.value.headers["x-request-id"] == request_id
    expect(page.locator("#footer-rid")).to_have_text(request_id)
    shots.take(page, "result")

    assert records.account_status(db, case.account_id) == ("blocked", "fraud_suspected")
    assert records.audit_results(db, request_id) == [("account.block", "succeeded")]

    page.get_by_role("link", name="Back to the customer").first.click()
    expect(account_row).to_contain_text("Blocked")
    expect(account_row).to_contain_text("Fraud suspected")
    activity = page.get_by_role("row").filter(has_text=request_id)
    expect(activity).to_contain_text("account.block")
    expect(activity).to_contain_text("Alice Moreno")
