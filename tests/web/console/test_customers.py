"""Search (by POST) and the customer page: masked personal data, an audited reveal, escaped
notes, accounts, payments and activity."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from opsgate.web.services import Services
from opsgate_demo.models import Customer
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows, key_of


def customer(services: Services, world: World, n: int = 0) -> Customer:
    with services.db.reading() as session:
        found = session.scalars(select(Customer).where(Customer.id == world.customer(n))).one()
        return found


def test_search_is_a_post_and_finds_by_email_phone_name_and_id(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    assert b.get("/console/search").status_code == 405  # nothing typed travels in a URL
    c = customer(services, world)
    for query in (c.email, c.phone, c.phone[-4:], c.name.split()[1], c.id):
        page = b.post("/console/search", {"q": query})
        assert page.status_code == 200, query
        assert f"/console/customers/{c.id}" in page.text, query
    account = b.post("/console/search", {"q": world.account()})
    assert f"/console/accounts/{world.account()}" in account.text
    jump = b.get(f"/console/accounts/{world.account()}")
    assert jump.status_code == 303
    assert jump.headers["location"].endswith(f"#account-{world.account()}")


def test_the_search_box_is_focused_and_slash_is_announced(browser: Callable[..., Browser]) -> None:
    page = browser("alice").get("/console")
    assert 'id="search-q"' in page.text
    assert "autofocus" in page.text
    assert "<kbd>/</kbd>" in page.text


def test_search_needs_the_capability(browser: Callable[..., Browser], services: Services) -> None:
    from opsgate.core.identity.users import ensure_user

    with services.db.writing() as session:
        ensure_user(session, "nora", "Nora Nobody", (), now=services.clock.now())
        session.commit()
    b = browser("nora")
    assert 'id="search-q"' not in b.get("/console").text
    refused = b.post("/console/search", {"q": "smith"})
    assert refused.status_code == 403
    assert "records.search" in refused.text
    assert audit_rows(services, action="records.search", result="denied")


def test_personal_data_is_masked_until_an_audited_reveal(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    c = customer(services, world)
    b = browser("alice")
    page = b.get(f"/console/customers/{c.id}")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert c.email not in page.text
    assert c.phone not in page.text
    assert c.name not in page.text
    assert c.phone[-4:] in page.text
    assert "Reveal personal data" in page.text
    revealed = b.post(f"/console/customers/{c.id}/reveal", {"reason": "caller passed ID&V"})
    assert revealed.status_code == 200
    assert revealed.headers["cache-control"] == "no-store"
    assert c.email in revealed.text and c.phone in revealed.text
    [audited] = audit_rows(services, action="customer.view_pii", result="succeeded")
    assert audited.actor_id == world.user_ids["alice"]
    assert audited.reason == "caller passed ID&V"
    assert audited.credential_id is not None and audited.credential_id.startswith("ses_")
    assert audited.outcome == {"revealed_fields": ["email", "name", "phone"]}
    assert c.email not in str(audited.outcome)
    assert c.email not in b.get(f"/console/customers/{c.id}").text  # masked again


def test_a_reveal_needs_a_reason(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    c = customer(services, world)
    refused = browser("alice").post(f"/console/customers/{c.id}/reveal", {"reason": ""})
    assert refused.status_code == 422
    assert c.email not in refused.text
    assert audit_rows(services, action="customer.view_pii", result="invalid")


def test_roles_without_view_pii_see_no_reveal_and_a_forged_one_is_refused(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    c = customer(services, world)
    b = browser("audrey")  # auditor: may search, may not reveal
    page = b.get(f"/console/customers/{c.id}")
    assert "Reveal personal data…" not in page.text
    forged = b.post(f"/console/customers/{c.id}/reveal", {"reason": "curious"})
    assert forged.status_code == 403
    assert c.email not in forged.text
    assert "support_agent" in forged.text  # which roles may
    [denied] = audit_rows(services, action="customer.view_pii")
    assert denied.result == "denied"


def test_a_note_with_markup_is_shown_escaped(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    page = b.get(f"/console/customers/{world.customer()}")
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    done = b.post(
        "/console/actions/customer.add_note",
        {
            "target": f"customer:{world.customer()}",
            "payload.text": evil,
            "reason": "<b>bold</b>",
            "idempotency_key": key_of(page.text),
        },
    )
    assert done.status_code == 200, done.text
    shown = b.get(f"/console/customers/{world.customer()}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in shown
    assert "<script>alert" not in shown
    assert "<img src=x" not in shown
    audit = browser("audrey").get(f"/console/audit?target=customer:{world.customer()}").text
    assert "&lt;b&gt;bold&lt;/b&gt;" in audit
    assert "<b>bold</b>" not in audit


def test_the_customer_page_lists_accounts_payments_and_activity(
    browser: Callable[..., Browser], world: World
) -> None:
    account = world.summary.accounts[0]
    b = browser("rita")
    page = b.get(f"/console/customers/{account['customer_id']}")
    assert f'id="account-{account["id"]}"' in page.text
    assert "Block account" in page.text and "Adjust balance" in page.text
    assert "Reverse payment" in page.text
    assert "No recorded activity." in page.text
    missing = b.get("/console/customers/cus_00000000000000000000000000")
    assert missing.status_code == 404
    assert "No customer" in missing.text


def test_console_search_shows_masked_results_and_audits_only_a_keyed_hash(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    from opsgate.core.audit.redaction import mask_email, mask_name

    c = customer(services, world, 3)
    b = browser("alice")
    page = b.post("/console/search", {"q": c.id})
    assert mask_name(c.name) in page.text and mask_email(c.email) in page.text
    assert c.name not in page.text and c.email not in page.text
    b.post("/console/search", {"q": c.email})
    rows = audit_rows(services, action="records.search")
    assert [row.parameters["term"]["kind"] for row in rows if row.parameters] == ["id", "email"]
    assert all(c.email not in str(row.parameters) for row in rows)


def test_console_searches_count_toward_the_same_limit_as_the_api(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    services.settings = services.settings.model_copy(update={"search_limit_count": 2})
    b = browser("alice")
    for _ in range(2):
        assert b.post("/console/search", {"q": "smith"}).status_code == 200
    api = b.get("/api/v1/search", params={"q": "smith"}, headers=world.auth("alice"))
    assert (api.status_code, api.json()["code"]) == (429, "limit_exceeded")
    refused = b.post("/console/search", {"q": "smith"})
    assert refused.status_code == 429
    assert "Usage limit reached" in refused.text
    assert len(audit_rows(services, action="records.search", result="limited")) == 2
