"""What the service answers: a status and a JSON body, rendered canonically and signed.

Bodies are rendered as canonical JSON (sorted keys, no whitespace), so a replayed answer is
byte for byte the first one even after a round trip through a JSONB column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from starlette.responses import Response

from opsgate.core.canonical import canonical_json
from opsgate.core.errors import problem_body
from opsgate.core.integrations import signing

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Part of what the answer's signature covers (core/integrations/signing.py): one name on both sides.
REPLAYED_HEADER = signing.REPLAYED_HEADER


class LedgerProblem(StrEnum):
    """Problem codes of this service (a refusal by the domain uses its own reason instead)."""

    UNAUTHENTICATED = "unauthenticated"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    INVALID_PAYLOAD = "invalid_payload"
    UNKNOWN_ACTION = "unknown_action"
    TARGET_NOT_FOUND = "target_not_found"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"
    # The database refused the effect as a duplicate (a ledger reference posted twice).
    DUPLICATE_EFFECT = "duplicate_effect"
    # Nothing was done: lock waits ran out, or the signature window passed before commit.
    UNAVAILABLE = "unavailable"
    # GET /v1/operations/{key} for a key no request used (a bare 404 would be any route).
    OPERATION_NOT_FOUND = "operation_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Mapping[str, Any]
    replayed: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        media_type = "application/json" if self.status < 400 else PROBLEM_MEDIA_TYPE
        headers = dict(self.headers)
        if self.replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(
            canonical_json(dict(self.body)).encode(),
            status_code=self.status,
            media_type=media_type,
            headers=headers,
        )


def problem(
    status: int,
    code: str,
    detail: str,
    request_id: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    title = code.replace("_", " ").capitalize()
    body = problem_body(
        status=status,
        code=code,
        title=title,
        detail=detail,
        request_id=request_id,
        errors=errors,
    )
    return Answer(status, body, headers=headers or {})
