"""Security headers on every response (API, problems, the docs and their assets; the console's
pages in tests/web/console/test_security.py), and the API docs served from opsgate's own
origin with nothing from a third party."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import World

# The console's policy (web/security.py); the API's allows nothing at all.
CONSOLE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


def assert_common_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    "path", ["/api/v1/healthz", "/api/v1/actions", "/api/v1/search?q=alice", "/api/v1/audit"]
)
def test_api_responses_carry_the_headers_and_are_never_stored(
    client: TestClient, world: World, path: str
) -> None:
    response = client.get(path, headers=world.auth("audrey"))
    assert_common_headers(response)
    assert response.headers["content-security-policy"] == API_POLICY
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/v1/actions", 401), ("/api/v1/no-such-thing", 404), ("/api/v1/healthz?probe=%00", 422)],
)
def test_problem_responses_carry_the_headers(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert_common_headers(response)
    assert response.headers["cache-control"] == "no-store"


def test_the_docs_load_only_same_origin_assets_and_they_are_served(client: TestClient) -> None:
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    assert_common_headers(page)
    assert page.headers["content-security-policy"] == CONSOLE_POLICY
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)  # no inline script
    references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(references) >= 3
    for url in references:
        assert url.startswith("/"), url  # same origin: no scheme, no host
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert_common_headers(asset)
    assert "SwaggerUIBundle" in client.get("/api/v1/docs/assets/swagger-ui-bundle.js").text
    assert client.get("/api/v1/openapi.json").status_code == 200
