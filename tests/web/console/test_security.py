"""CSRF on every unsafe request, the security headers on every page, no inline script or
style anywhere, and the development key file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from opsgate.settings import Settings
from opsgate.web.security import CONTENT_SECURITY_POLICY, secret_keys
from opsgate.web.services import Services
from opsgate_demo.models import Note
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows, key_of

TEMPLATES = Path(__file__).parents[3] / "src" / "opsgate" / "web" / "templates"


def note_count(services: Services, customer_id: str) -> int:
    with services.db.reading() as session:
        return int(session.scalar(select(func.count()).where(Note.customer_id == customer_id)) or 0)


def note_form(b: Browser, world: World) -> dict[str, str]:
    page = b.get(f"/console/customers/{world.customer()}")
    return {
        "target": f"customer:{world.customer()}",
        "payload.text": "called about a card",
        "reason": "ticket 1",
        "idempotency_key": key_of(page.text),
    }


def test_a_post_without_a_csrf_token_is_refused_and_does_nothing(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    response = b.post("/console/actions/customer.add_note", note_form(b, world), csrf=False)
    assert response.status_code == 403
    assert "security token" in response.text
    assert note_count(services, world.customer()) == 0
    [refused] = audit_rows(services, action="auth.csrf")
    assert (refused.result, refused.error_code) == ("denied", "csrf_token")


def test_a_token_from_another_session_is_refused(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    alice, bob = browser("alice"), browser("bob")
    form = note_form(alice, world) | {"csrf_token": bob.csrf()}
    assert alice.post("/console/actions/customer.add_note", form).status_code == 403
    assert note_count(services, world.customer()) == 0


def test_a_cross_site_post_is_refused_even_with_a_valid_token(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        response = b.post(
            "/console/actions/customer.add_note", note_form(b, world), headers=headers
        )
        assert response.status_code == 403, headers
        assert "another site" in response.text
    assert note_count(services, world.customer()) == 0
    assert len(audit_rows(services, action="auth.csrf", error_code="cross_site")) == 4
    same = b.post(
        "/console/actions/customer.add_note",
        note_form(b, world),
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 200
    assert note_count(services, world.customer()) == 1


def test_sign_in_and_sign_out_need_the_token_too(
    browser: Callable[..., Browser], services: Services
) -> None:
    b = browser()
    login = b.post("/console/login", {"username": "alice", "password": "x" * 20}, csrf=False)
    assert login.status_code == 403
    signed_in = browser("alice")
    assert signed_in.post("/console/logout", csrf=False).status_code == 403
    assert signed_in.get("/console").status_code == 200  # still signed in


@pytest.mark.parametrize(
    "path",
    [
        "/console",
        "/console/approvals",
        "/console/audit",
        "/console/metrics",
        "/console/no-such-page",
    ],
)
def test_security_headers_on_every_page(
    browser: Callable[..., Browser], path: str, world: World
) -> None:
    b = browser("rita")
    for page in (
        b.get(path),
        b.get(f"/console/customers/{world.customer()}"),
        b.get(f"/console/actions/account.block?target=account:{world.account()}"),
        browser().get("/console/login"),
    ):
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "same-origin"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"


def test_static_files_have_the_headers_and_may_be_cached(browser: Callable[..., Browser]) -> None:
    for name in ("console.css", "console.js"):
        response = browser().get(f"/console/static/{name}")
        assert response.status_code == 200
        assert response.headers["x-frame-options"] == "DENY"
        assert "no-store" not in response.headers.get("cache-control", "")


def test_no_inline_script_style_or_event_handler_in_any_template() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert "<style" not in text, template.name
        assert not re.search(r"\sstyle=", text), template.name
        assert not re.search(r"\son[a-z]+=", text), template.name
        assert "javascript:" not in text, template.name
        assert "|safe" not in text.replace(" ", ""), template.name


def test_a_development_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret"
    settings = Settings(secret_key_file=path)
    first = secret_keys(settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert secret_keys(settings) == first
    assert len(first[0]) >= 32
    configured = Settings(secret_key="k" * 40, secret_key_previous="p" * 40)
    assert secret_keys(configured) == ["p" * 40, "k" * 40]
