"""What a browser can do to a form by accident or on purpose: double-click it, write markup
into it, or post to it from another site. None of it may run twice, run script, or act."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from opsgate.db.engine import Database
from tests.browser import records, steps
from tests.browser.conftest import BrowserSession, OtherSite, Shots
from tests.browser.steps import expect
from tests.servers import Server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]

SCRIPT_NOTE = "<script>alert(1)</script>"


def fill_note(page: Page, text: str) -> None:
    """On a customer's page: write a note in the "Add a note" form (not yet submitted)."""
    form = page.locator("form[action='/console/actions/customer.add_note']")
    form.get_by_label("Text").fill(text)
    form.get_by_role("textbox", name="Reason (required)").fill("Call with the customer")


@pytest.mark.parametrize("javascript", [True, False], ids=["scripts-on", "scripts-off"])
def test_double_clicked_submit_adds_one_note(
    javascript: bool,
    new_page: Callable[..., Page],
    db: Database,
    shots: Shots,
) -> None:
    """With scripts on, the page disables the button once sent; with scripts off, Chromium
    itself sends one submission (a re-post is covered by the reload tests below)."""
    page = new_page(javascript=javascript)
    case = records.account_case(db)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    text = f"Customer called twice ({'with' if javascript else 'without'} scripts)"
    fill_note(page, text)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.get_by_role("button", name="Add a note").dblclick()
    banner = steps.outcome(page)
    expect(banner).to_be_visible()
    shots.take(page, "after-double-click")

    assert records.notes(db, case.customer_id) == [text]
    assert 1 <= len(posts) <= 2, posts
    # Whichever answer the browser shows (the first, a replay, or "still running"), it says
    # the note was added or will be, never that it failed.
    expect(banner).to_contain_text(re.compile("Done|Already submitted|Still running"))
    page.get_by_role("link", name="Back to the customer").first.click()
    expect(page.locator(".note-text").filter(has_text=text)).to_have_count(1)


def test_reloading_the_result_page_posts_again_and_adds_one_note(
    page: Page, db: Database, shots: Shots
) -> None:
    """Reload on a form's result page makes the browser post the same form again."""
    case = records.account_case(db)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    fill_note(page, "Asked for a statement")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.get_by_role("button", name="Add a note").click()
    expect(steps.outcome(page)).to_contain_text("Add a note: executed.")
    first_request_id = steps.outcome_request_id(page)

    page.reload()
    banner = steps.outcome(page)
    expect(banner).to_contain_text("Already submitted: done")
    expect(banner).to_contain_text("It did not run again.")
    assert steps.outcome_request_id(page) == first_request_id
    assert len(posts) == 2, posts
    shots.take(page, "replayed")
    assert records.notes(db, case.customer_id) == ["Asked for a statement"]


def test_reloading_a_reversal_request_asks_for_approval_once(
    page: Page, db: Database, shots: Shots
) -> None:
    case = records.payment_case(db, more_than=15_000, at_most=500_000)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    steps.request_reversal(page, case.payment_id, "150.00", "Ticket 7: duplicate charge")
    approval_id = page.locator("#outcome-id-1").inner_text().strip()

    page.reload()
    banner = steps.outcome(page)
    expect(banner).to_contain_text("Already submitted: waiting for approval")
    expect(page.locator("#outcome-id-1")).to_have_text(approval_id)
    shots.take(page, "replayed")
    [approval] = records.approvals(db, f"payment:{case.payment_id}")
    assert approval.id == approval_id
    assert records.reversals(db, case.payment_id) == []


def test_double_clicked_approval_reverses_once(
    page: Page, new_page: Callable[..., Page], db: Database, shots: Shots
) -> None:
    case = records.payment_case(db, more_than=15_000, at_most=500_000)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    steps.request_reversal(page, case.payment_id, "150.00", "Ticket 99: duplicate charge")
    approval_id = page.locator("#outcome-id-1").inner_text().strip()

    rita = new_page()
    steps.sign_in(rita, "rita")
    rita.goto(f"/console/approvals/{approval_id}")
    rita.get_by_role("button", name="Approve").dblclick()
    expect(steps.outcome(rita)).to_be_visible()
    shots.take(rita, "after-double-click")

    assert len(records.reversals(db, case.payment_id)) == 1
    assert records.reversed_minor(db, case.payment_id) == 15_000
    assert records.ledger_total(db) == 0
    [approval] = records.approvals(db, f"payment:{case.payment_id}")
    assert approval.status == "succeeded"
    assert [d.decision for d in approval.decisions] == ["approve"]


def test_a_script_in_a_note_renders_as_text(
    page: Page, db: Database, browser_session: BrowserSession, shots: Shots
) -> None:
    case = records.account_case(db)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    fill_note(page, SCRIPT_NOTE)
    page.get_by_role("button", name="Add a note").click()
    expect(steps.outcome(page)).to_contain_text("Add a note: executed.")
    assert records.notes(db, case.customer_id) == [SCRIPT_NOTE]

    page.get_by_role("link", name="Back to the customer").first.click()
    note = page.locator(".note-text")
    expect(note).to_have_text(SCRIPT_NOTE)
    assert note.locator("script").count() == 0
    assert html.escape(SCRIPT_NOTE, quote=False) in note.inner_html()
    shots.take(page, "customer")

    assert not [d for d in browser_session.dialogs if d.startswith("alert")], (
        browser_session.dialogs
    )


def test_a_script_in_a_reason_renders_as_text_for_the_reviewer(
    page: Page,
    new_page: Callable[..., Page],
    db: Database,
    browser_session: BrowserSession,
    shots: Shots,
) -> None:
    case = records.payment_case(db, more_than=15_000, at_most=500_000)
    reason = '<img src=x onerror="alert(2)"><script>alert(3)</script>'
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    steps.request_reversal(page, case.payment_id, "150.00", reason)
    approval_id = page.locator("#outcome-id-1").inner_text().strip()

    rita = new_page()
    steps.sign_in(rita, "rita")
    rita.get_by_role("navigation").get_by_role("link", name="Approvals").click()
    expect(rita.get_by_role("row").filter(has_text=case.payment_id)).to_contain_text("<img src=x")
    rita.goto(f"/console/approvals/{approval_id}")
    shown = rita.locator("dd.reason")
    expect(shown).to_have_text(reason)
    assert shown.locator("img, script").count() == 0
    shots.take(rita, "approval")
    assert not [d for d in browser_session.dialogs if d.startswith("alert")], (
        browser_session.dialogs
    )


def attack_page(console: Server, target: str) -> str:
    """A page on another site that posts a note to the console as soon as it loads."""
    return f"""<!doctype html>
<html><body>
<h1>You won a prize</h1>
<form id="attack" method="post" action="{console.base_url}/console/actions/customer.add_note">
  <input type="hidden" name="target" value="{target}">
  <input type="hidden" name="payload.text" value="Planted by another site">
  <input type="hidden" name="reason" value="csrf">
  <input type="hidden" name="idempotency_key" value="con_attacker_key_0000000000000000">
</form>
<script>document.getElementById("attack").submit();</script>
</body></html>"""


def test_a_cross_site_form_post_is_refused(
    page: Page, console: Server, other_site: OtherSite, db: Database, shots: Shots
) -> None:
    """Alice, signed in, opens another site's page, which posts a form to the console."""
    case = records.account_case(db)
    steps.sign_in(page, "alice")
    url = other_site.serve("/prize", attack_page(console, f"customer:{case.customer_id}"))

    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.goto(url)
    page.wait_for_load_state()
    assert answer.value.url == f"{console.base_url}/console/actions/customer.add_note"
    assert answer.value.status == 403
    expect(steps.outcome(page)).to_contain_text("This request came from another site")
    shots.take(page, "refused")

    request_id = answer.value.headers["x-request-id"]
    assert records.audit_results(db, request_id) == [("auth.csrf", "denied")]
    assert records.notes(db, case.customer_id) == []


def test_a_post_without_the_csrf_token_is_refused(page: Page, db: Database, shots: Shots) -> None:
    case = records.account_case(db)
    steps.sign_in(page, "alice")
    steps.open_customer(page, case.customer_email, case.customer_id)
    key = page.locator("input[name=idempotency_key]").first.get_attribute("value")
    form = {
        "target": f"customer:{case.customer_id}",
        "payload.text": "Posted without a token",
        "reason": "csrf",
        "idempotency_key": key or "",
    }

    refused = page.request.post("/console/actions/customer.add_note", form=form)
    assert refused.status == 403
    assert "security token is missing" in refused.text()
    assert records.audit_results(db, refused.headers["x-request-id"]) == [("auth.csrf", "denied")]

    forged = page.request.post(
        "/console/actions/customer.add_note", form=form | {"csrf_token": "not-a-token"}
    )
    assert forged.status == 403

    assert records.notes(db, case.customer_id) == []
    page.reload()
    expect(page.get_by_text("No notes yet.")).to_be_visible()
    shots.take(page, "customer-unchanged")
