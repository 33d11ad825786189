"""What the pages show a person: nothing overflows a laptop screen, and a reviewer reads the
amount they approve in money, not in minor units. Rendering only, so SQLite alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from opsgate.db.engine import Database
from tests.browser import records, steps
from tests.browser.conftest import VIEWPORT, Shots
from tests.browser.steps import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.multiprocess,
    pytest.mark.parametrize("test_db", ["sqlite"], indirect=True),
]


def page_width(page: Page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def test_customer_page_fits_a_laptop_screen(page: Page, db: Database, shots: Shots) -> None:
    case = records.payment_case(db, more_than=0, at_most=10**12)  # a customer with payments
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    shots.take(page, "customer")
    assert page_width(page) <= VIEWPORT["width"]


@pytest.fixture
def approved_reversal(
    page: Page, new_page: Callable[..., Page], db: Database
) -> tuple[Page, records.PaymentCase]:
    """Alice asked to reverse 150.00; rita has the request open."""
    case = records.payment_case(db, more_than=15_000, at_most=500_000)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    steps.request_reversal(page, case.payment_id, "150.00", "Ticket 31: refund agreed")
    approval_id = page.locator("#outcome-id-1").inner_text().strip()
    rita = new_page()
    steps.sign_in(rita, "rita")
    rita.goto(f"/console/approvals/{approval_id}")
    return rita, case


def test_reviewer_reads_the_amount_to_approve_in_money(
    approved_reversal: tuple[Page, records.PaymentCase], shots: Shots
) -> None:
    rita, case = approved_reversal
    submitted = rita.get_by_role("table", name="What will be submitted")
    expect(submitted).to_be_visible()
    shots.take(rita, "approval")
    expect(submitted).to_contain_text(f"150.00 {case.currency}", timeout=1_000)


def test_an_executed_request_does_not_warn_about_its_own_change(
    approved_reversal: tuple[Page, records.PaymentCase], shots: Shots
) -> None:
    rita, _case = approved_reversal
    rita.get_by_role("button", name="Approve").click()
    expect(steps.outcome(rita)).to_contain_text("Approved and executed")
    shots.take(rita, "executed")
    expect(rita.get_by_text("changed since the request was made")).to_have_count(0, timeout=1_000)
