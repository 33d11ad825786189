"""The API docs page renders opsgate's own OpenAPI document in Chromium, from same-origin
assets only (no CDN: it must work on a machine without Internet access)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.servers import Server

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

    from tests.browser.conftest import Shots

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]


def test_the_docs_page_renders_every_operation_from_same_origin_assets(
    page: Page, console: Server, shots: Shots
) -> None:
    requested: list[str] = []

    def on_request(request: Request) -> None:
        requested.append(request.url)

    page.on("request", on_request)
    page.goto("/api/v1/docs")
    page.wait_for_selector(".opblock", timeout=15_000)
    shots.take(page, "docs")
    assert "Unable to render this definition" not in page.inner_text("body")
    assert page.locator(".opblock-summary-path", has_text="/api/v1/actions/{name}").count() >= 1
    assert page.locator(".opblock").count() >= 10
    assert [url for url in requested if not url.startswith(console.base_url)] == []
    page.set_viewport_size({"width": 390, "height": 844})
    shots.take(page, "docs-phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the docs overflow a phone's width by {overflow}px"
