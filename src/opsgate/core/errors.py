"""Typed errors of the control layer and the problem codes they map to.

Every refusal the gateway can give is one of these classes; the web layer turns them into
RFC 9457 problem responses without knowing anything about their causes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ProblemCode(StrEnum):
    """Machine-readable `code` of a problem response (DESIGN.md, JSON API contract)."""

    UNAUTHENTICATED = "unauthenticated"
    STEP_UP_REQUIRED = "step_up_required"
    AUTHENTICATION_RATE_LIMITED = "authentication_rate_limited"
    FORBIDDEN = "forbidden"
    UNKNOWN_ACTION = "unknown_action"
    TARGET_NOT_FOUND = "target_not_found"
    INVALID_PAYLOAD = "invalid_payload"
    DOMAIN_REJECTED = "domain_rejected"
    SELF_APPROVAL = "self_approval"
    APPROVAL_NOT_PENDING = "approval_not_pending"
    APPROVAL_EXPIRED = "approval_expired"
    STALE_APPROVAL = "stale_approval"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"
    TARGET_BUSY = "target_busy"
    TARGET_UNAVAILABLE = "target_unavailable"
    AUDIT_BLOCKED = "audit_blocked"
    LIMIT_EXCEEDED = "limit_exceeded"
    BACKEND_REJECTED = "backend_rejected"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_TIMEOUT = "backend_timeout"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTERNAL_ERROR = "internal_error"


class OpsgateError(Exception):
    """Base of every refusal the control layer reports to a caller."""

    code: ProblemCode = ProblemCode.INTERNAL_ERROR
    status: int = 500
    title: str = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        # Extension members of the problem response (e.g. approval_id, status).
        self.extra = extra or {}


class Unauthenticated(OpsgateError):
    code = ProblemCode.UNAUTHENTICATED
    status = 401
    title = "Authentication required"


class StepUpRequired(OpsgateError):
    """Authenticated, but the act needs a fresh proof of identity (RFC 9470's idea): a
    money-moving approval through the API without a valid step-up grant."""

    code = ProblemCode.STEP_UP_REQUIRED
    status = 401
    title = "A fresh proof of identity is required"


class AuthenticationRateLimited(OpsgateError):
    """Too many refused authentications from this address in this minute
    (core/identity/auth_refusals.py); a valid credential is still accepted."""

    code = ProblemCode.AUTHENTICATION_RATE_LIMITED
    status = 429
    title = "Too many refused authentications"


class Forbidden(OpsgateError):
    code = ProblemCode.FORBIDDEN
    status = 403
    title = "Not permitted"


class UnknownAction(OpsgateError):
    code = ProblemCode.UNKNOWN_ACTION
    status = 404
    title = "Unknown action"


class TargetNotFound(OpsgateError):
    code = ProblemCode.TARGET_NOT_FOUND
    status = 404
    title = "Target not found"


class TargetUnavailable(OpsgateError):
    """The service that owns a remote target could not say what it is (unreachable, slow, or
    an answer that did not verify or follow the contract); nothing was done."""

    code = ProblemCode.TARGET_UNAVAILABLE
    status = 503
    title = "The target's service is unavailable"


class InvalidPayload(OpsgateError):
    code = ProblemCode.INVALID_PAYLOAD
    status = 422
    title = "Invalid request"


class DomainRejected(OpsgateError):
    """A handler refused the action on business grounds (its effects were rolled back)."""

    code = ProblemCode.DOMAIN_REJECTED
    status = 409
    title = "Refused by the domain"

    def __init__(self, detail: str, *, reason: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail, extra={"reason": reason} | (extra or {}))
        self.reason = reason


class SelfApproval(OpsgateError):
    code = ProblemCode.SELF_APPROVAL
    status = 403
    title = "You cannot decide your own request"


class ApprovalNotPending(OpsgateError):
    code = ProblemCode.APPROVAL_NOT_PENDING
    status = 409
    title = "The request is no longer pending"


class ApprovalExpired(OpsgateError):
    code = ProblemCode.APPROVAL_EXPIRED
    status = 409
    title = "The request has expired"


class StaleApproval(OpsgateError):
    code = ProblemCode.STALE_APPROVAL
    status = 409
    title = "The approved request no longer matches"


class IdempotencyKeyRequired(OpsgateError):
    code = ProblemCode.IDEMPOTENCY_KEY_REQUIRED
    status = 400
    title = "An Idempotency-Key header is required"


class IdempotencyMismatch(OpsgateError):
    code = ProblemCode.IDEMPOTENCY_MISMATCH
    status = 422
    title = "The Idempotency-Key was used for a different request"


class IdempotencyInFlight(OpsgateError):
    code = ProblemCode.IDEMPOTENCY_IN_FLIGHT
    status = 409
    title = "A request with this Idempotency-Key is still running"


class AuditBlocked(OpsgateError):
    """Nothing can be recorded, so nothing may change: the audit chain cannot be extended
    (core/audit_chain.RecordBeyondHead). Unaudited by nature; logged."""

    code = ProblemCode.AUDIT_BLOCKED
    status = 503
    title = "The audit trail cannot record"


class TargetBusy(OpsgateError):
    """The action's transaction gave up waiting for a lock (the target, or SQLite's writer
    lock) or on a statement: nothing of it committed."""

    code = ProblemCode.TARGET_BUSY
    status = 503
    title = "The target is busy"


class LimitExceeded(OpsgateError):
    code = ProblemCode.LIMIT_EXCEEDED
    status = 429
    title = "Usage limit reached"


class BackendRejected(OpsgateError):
    """The remote backend refused the action by its own rules; nothing was done."""

    code = ProblemCode.BACKEND_REJECTED
    status = 409
    title = "Refused by the backend"


class BackendUnavailable(OpsgateError):
    """The remote backend could not be reached or said it could not serve; nothing was done."""

    code = ProblemCode.BACKEND_UNAVAILABLE
    status = 503
    title = "The backend is unavailable"


class BackendTimeout(OpsgateError):
    """The remote backend did not answer in time: the outcome is unknown until reconciled."""

    code = ProblemCode.BACKEND_TIMEOUT
    status = 504
    title = "The backend did not answer in time"


class NotFound(OpsgateError):
    code = ProblemCode.NOT_FOUND
    status = 404
    title = "Not found"


class PayloadTooLarge(OpsgateError):
    code = ProblemCode.PAYLOAD_TOO_LARGE
    status = 413
    title = "The request body is too large"


class RequestTimeout(OpsgateError):
    code = ProblemCode.REQUEST_TIMEOUT
    status = 408
    title = "The request body did not arrive in time"


class DomainError(Exception):
    """Raised by handlers for a business refusal; `reason` is a stable snake_case identifier.

    The gateway rolls the handler's effects back, audits the refusal and reports it as
    `domain_rejected`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


PROBLEM_TYPE = "urn:opsgate:problem:{code}"


def problem_body(
    *,
    status: int,
    code: ProblemCode | str,
    title: str,
    detail: str,
    request_id: str,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 body every error takes (extension members: code, request_id, ...)."""
    body: dict[str, Any] = (extra or {}) | {
        "type": PROBLEM_TYPE.format(code=code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": str(code),
        "request_id": request_id,
    }
    if errors:
        body["errors"] = errors
    return body


def error_body(error: OpsgateError, request_id: str) -> dict[str, Any]:
    return problem_body(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        request_id=request_id,
        errors=error.errors,
        extra=error.extra,
    )
