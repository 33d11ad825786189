"""`customer.add_note` through the whole governed HTTP path, against its bare twin.

governed: POST /api/v1/actions/customer.add_note with a bearer token and the envelope
          {"target": "customer:<id>", "payload": {"text": ...}, "reason": ...}: middleware,
          authentication, policy, validation, row-locked target load, handler, audit record,
          one transaction.
bare:     POST /bench/customers/<id>/notes with the same body: the same note written in one
          transaction with no controls (only mounted with OPSGATE_BENCH_ENDPOINTS=1).

Notes are spread round-robin over NOTE_CUSTOMERS customers, the same sequence for both.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console

from bench.load import Call, Endpoint
from bench.scenarios import Comparison, Scenario, Settings, Target, compare, register

NOTE_CUSTOMERS = 50
USERNAME = "alice"  # support_agent: may start customer.add_note under the demo policy
ACTION = "customer.add_note"


def _succeeded(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("status") != "succeeded":
        return "the answer does not say status=succeeded"
    result = body.get("result")
    if not isinstance(result, dict) or not str(result.get("note_id", "")).startswith("not_"):
        return "the answer carries no note_id"
    return None


def endpoints(target: Target) -> tuple[Endpoint, Endpoint]:
    """The governed endpoint and its bare twin, writing notes to the same customers."""
    customers = target.seeded.customer_ids[:NOTE_CUSTOMERS]
    token = target.seeded.tokens[USERNAME]
    json_header = {"Content-Type": "application/json"}
    governed_headers = {**json_header, "Authorization": f"Bearer {token}"}

    def factory(kind: str) -> Callable[[int], Call]:
        sequence = itertools.count()  # next() on a count is atomic under the GIL

        def call(_n: int) -> Call:
            i = next(sequence)
            customer = customers[i % len(customers)]
            body = json.dumps(
                {
                    "target": f"customer:{customer}",
                    "payload": {"text": f"Benchmark note {i}: customer called about a card."},
                    "reason": "benchmark: control-layer overhead",
                }
            ).encode()
            if kind == "governed":
                return Call(f"/api/v1/actions/{ACTION}", body, governed_headers)
            return Call(f"/bench/customers/{customer}/notes", body, json_header)

        return call

    return (
        Endpoint(
            "governed",
            factory("governed"),
            _succeeded,
            {401: f"the token of {USERNAME} was refused", 403: f"{USERNAME} may not {ACTION}"},
        ),
        Endpoint(
            "bare",
            factory("bare"),
            _succeeded,
            {404: "the server was started without OPSGATE_BENCH_ENDPOINTS=1"},
        ),
    )


@register
class ActionPath(Scenario):
    name = "action_path"
    description = f"{ACTION}: governed HTTP action vs bare endpoint"

    def run(self, settings: Settings, target: Target, console: Console) -> list[Comparison]:
        governed, bare = endpoints(target)
        return compare(
            self.name, settings, target.database.backend, target.server, governed, bare, console
        )
