"""Every 4xx carries its own problem code (`internal_error` is for 5xx alone), and a client
error the framework itself answers is audited like the gateway's refusals."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from opsgate.core.errors import ProblemCode
from opsgate.web.problems import http_code
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.test_bounded_input import assert_problem, audited


def test_a_body_the_framework_cannot_decode_is_an_audited_bad_request(
    client: TestClient, world: World, services: Services
) -> None:
    response = client.post(
        "/api/v1/approvals/apr_missing/approve",
        content=b'{"comment": "\xff"}',  # not UTF-8
        headers=world.auth("rita") | {"Content-Type": "application/json"},
    )
    body = assert_problem(response, 400, "bad_request")
    assert audited(services, body["request_id"]).error_code == "bad_request"


@pytest.mark.parametrize("status", [400, 401, 403, 406, 408, 409, 410, 413, 415, 418, 429])
def test_no_client_error_falls_back_to_internal_error(status: int) -> None:
    assert http_code(status) != ProblemCode.INTERNAL_ERROR
    assert http_code(500) == ProblemCode.INTERNAL_ERROR
