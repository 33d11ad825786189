"""The browser harness itself: Chromium reaches this test's own server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.servers import Server

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.multiprocess]


def test_health_endpoint_loads_in_the_browser(page: Page, console: Server) -> None:
    response = page.goto("/api/v1/healthz")
    assert response is not None
    assert response.status == 200
    assert response.headers["x-request-id"]
    assert page.url.startswith(console.base_url)
    assert json.loads(page.inner_text("body"))["status"] == "ok"
