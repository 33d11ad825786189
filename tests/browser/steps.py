"""What an operator does in the console, one step at a time, the way a person would: by
labels, button names and links, not by URLs built in the test."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tests.browser.conftest import PASSWORD

try:
    from playwright.sync_api import expect
except ImportError:  # the suite is skipped then (tests/browser/conftest.py)
    expect = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    """Open the console, get sent to the sign-in page, sign in, land on the home page."""
    page.goto("/console")
    assert page.url.split("?")[0].endswith("/console/login"), page.url
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console$"))


def search(page: Page, query: str) -> None:
    page.get_by_role("searchbox", name="Find a customer, account or payment").fill(query)
    page.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_url(re.compile(r"/console/search$"))


def outcome(page: Page) -> Locator:
    """The banner that says what happened."""
    return page.locator("#outcome")


def outcome_request_id(page: Page) -> str:
    value = page.locator("#outcome-rid").inner_text().strip()
    assert REQUEST_ID.match(value), value
    return value


def csrf_token(page: Page) -> str:
    """The CSRF token the page's own forms carry (e.g. the sign-out form's)."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def open_customer(page: Page, email: str, customer_id: str) -> None:
    """From the home page's search box to the customer's page, by their email address."""
    search(page, email)
    expect(page.get_by_role("heading", name="1 result")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=customer_id)
    row.get_by_role("link").click()
    page.wait_for_url(re.compile(rf"/console/customers/{customer_id}$"))


def request_reversal(page: Page, payment_id: str, amount: str, reason: str) -> None:
    """On a customer's page: open the payment's reversal form, fill it in and submit it."""
    page.locator(f"#payment-{payment_id}").get_by_role("link", name="Reverse payment").click()
    page.wait_for_url(re.compile(r"/console/actions/payment\.reverse\?target="))
    page.get_by_label("Amount").fill(amount)
    page.get_by_label("Reason code").select_option("customer_dispute")
    page.get_by_role("textbox", name="Reason (required)").fill(reason)
    page.get_by_role("button", name="Reverse payment").click()
    expect(outcome(page)).to_be_visible()
