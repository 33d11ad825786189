"""Date filters are range-checked: a date the database or the arithmetic cannot hold (year 1,
year 9999) is an audited 422 with a code, not a 500. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from opsgate.web.services import Services
from tests.conftest import World
from tests.web.test_bounded_input import assert_problem, audited

REPORTS = ["/api/v1/audit", "/api/v1/controls/report", "/api/v1/approvals/metrics"]
EXTREMES = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"]


@pytest.mark.parametrize("path", REPORTS)
@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", EXTREMES)
def test_an_out_of_range_filter_date_is_an_audited_422(
    client: TestClient, world: World, services: Services, path: str, name: str, value: str
) -> None:
    response = client.get(path, params={name: value}, headers=world.auth("audrey"))
    body = assert_problem(response, 422, "invalid_payload")
    assert body["errors"][0]["loc"] == ["query", name]
    assert audited(services, body["request_id"]).error_code == "invalid_payload"


@pytest.mark.parametrize("path", REPORTS)
def test_ordinary_filter_dates_still_work(client: TestClient, world: World, path: str) -> None:
    response = client.get(
        path,
        params={"since": "2020-01-01T00:00:00Z", "until": "2090-01-01T00:00:00+02:00"},
        headers=world.auth("audrey"),
    )
    assert response.status_code == 200, response.text
