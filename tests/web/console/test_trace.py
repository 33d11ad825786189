"""Console requests build their audit origin through `origin_of` too: the trace reaches the
record of an action taken in the console."""

from __future__ import annotations

from collections.abc import Callable

from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows, key_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_console_action_carries_the_requests_trace(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    key = key_of(b.get(f"/console/customers/{world.customer()}").text)
    response = b.post(
        "/console/actions/customer.add_note",
        {
            "target": f"customer:{world.customer()}",
            "payload.text": "Called about a card",
            "reason": "ticket 12",
            "idempotency_key": key,
        },
        headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    )

    assert response.status_code == 200, response.text
    [done] = audit_rows(services, action="customer.add_note", result="succeeded")
    assert done.trace_id == TRACE
    assert response.headers["traceresponse"].startswith(f"00-{TRACE}-")
