"""Every outcome said plainly: executed (with the result), waiting for approval (by whom, until
when), refused (which rule, what to do next) or failed (the error); always with the request ID.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from opsgate.core.approvals.gate import DecisionResult
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.errors import OpsgateError, ProblemCode
from opsgate.db.models import ApprovalRequest
from opsgate.web.console import formatting
from opsgate.web.console.forms import field_errors


class OutcomeKind(StrEnum):
    EXECUTED = "executed"
    PENDING = "pending"
    RECORDED = "recorded"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    title: str
    message: str
    request_id: str
    details: tuple[tuple[str, str], ...] = ()
    next_step: str | None = None
    links: tuple[tuple[str, str], ...] = ()
    # Other IDs worth quoting (e.g. an approved request's execution request ID).
    ids: tuple[tuple[str, str], ...] = ()
    field_errors: Mapping[str, str] = field(default_factory=dict)
    replayed: bool = False
    # The HTTP status of the page that shows it.
    status: int = 200

    @property
    def is_alert(self) -> bool:
        return self.kind in (OutcomeKind.REFUSED, OutcomeKind.FAILED)


def result_details(result: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """A handler's result as labelled values; `*_minor` amounts shown as money."""
    if not result:
        return ()
    currency = result.get("currency")
    rows = []
    for key, value in result.items():
        if key.endswith("_minor") and isinstance(value, int):
            rows.append((formatting.field_label(key), formatting.money(value, currency)))
        elif isinstance(value, list):
            rows.append((formatting.humanize(key), ", ".join(str(v) for v in value) or "none"))
        elif isinstance(value, dict):
            rows.append((formatting.humanize(key), formatting.pretty_json(value)))
        else:
            rows.append((formatting.humanize(key), "" if value is None else str(value)))
    return tuple(rows)


def executed(label: str, result: Mapping[str, Any] | None, request_id: str) -> Outcome:
    return Outcome(
        kind=OutcomeKind.EXECUTED,
        title="Done",
        message=f"{label}: executed.",
        request_id=request_id,
        details=result_details(result),
    )


def _waiting_for(approval: ApprovalRequest, now: datetime) -> str:
    roles = ", ".join(formatting.humanize(r) for r in approval.approver_roles)
    count = "one approval" if approval.quorum == 1 else f"{approval.quorum} approvals"
    left = formatting.duration((approval.expires_at - now).total_seconds())
    return (
        f"It needs {count} from: {roles}, by {formatting.when(approval.expires_at)} "
        f"({left} left). Nothing has changed yet."
    )


def pending(
    label: str, approval: ApprovalRequest | None, approval_id: str, request_id: str, now: datetime
) -> Outcome:
    waiting = _waiting_for(approval, now) if approval is not None else "Nothing has changed yet."
    return Outcome(
        kind=OutcomeKind.PENDING,
        title="Waiting for approval",
        message=f"{label}: held for a second person's approval. {waiting}",
        request_id=request_id,
        links=(("Open the approval request", f"/console/approvals/{approval_id}"),),
        ids=(("Approval ID", approval_id),),
        next_step="You will find it under My requests on the home page; you may cancel it there.",
    )


# title, kind, what to do next
_REFUSALS: dict[str, tuple[str, OutcomeKind, str]] = {
    ProblemCode.FORBIDDEN: (
        "Not permitted",
        OutcomeKind.REFUSED,
        "Ask someone who holds one of those roles, or an admin to review your roles.",
    ),
    ProblemCode.SELF_APPROVAL: (
        "You cannot decide this request",
        OutcomeKind.REFUSED,
        "Another reviewer must decide it. The requester may cancel it while it is pending.",
    ),
    ProblemCode.INVALID_PAYLOAD: (
        "Some values need correcting",
        OutcomeKind.REFUSED,
        "Correct the fields marked below and submit again. Nothing was done.",
    ),
    ProblemCode.DOMAIN_REJECTED: (
        "Not done",
        OutcomeKind.FAILED,
        "Nothing was changed. Check the record's current state against the reason above.",
    ),
    ProblemCode.LIMIT_EXCEEDED: (
        "Usage limit reached",
        OutcomeKind.REFUSED,
        "Wait for the limit's window to pass, or ask a colleague. Nothing was done.",
    ),
    ProblemCode.IDEMPOTENCY_IN_FLIGHT: (
        "Still running",
        OutcomeKind.PENDING,
        "The first submission of this form is still running: refresh this page in a few "
        "seconds to see its outcome. It will not run twice.",
    ),
    ProblemCode.IDEMPOTENCY_MISMATCH: (
        "This form was already submitted with other values",
        OutcomeKind.REFUSED,
        "The form now has a new key: check the values and submit again.",
    ),
    ProblemCode.IDEMPOTENCY_KEY_REQUIRED: (
        "The form is incomplete",
        OutcomeKind.REFUSED,
        "Reload the form and submit again.",
    ),
    ProblemCode.TARGET_NOT_FOUND: (
        "Not found",
        OutcomeKind.REFUSED,
        "Check the ID; search for the customer again.",
    ),
    ProblemCode.UNKNOWN_ACTION: ("Unknown action", OutcomeKind.REFUSED, "Go back and reload."),
    ProblemCode.APPROVAL_NOT_PENDING: (
        "Already decided",
        OutcomeKind.REFUSED,
        "Reload the request to see its current state.",
    ),
    ProblemCode.APPROVAL_EXPIRED: (
        "Expired",
        OutcomeKind.REFUSED,
        "If it is still needed, the requester must submit it again.",
    ),
    ProblemCode.STALE_APPROVAL: (
        "Not executed: the request no longer matches",
        OutcomeKind.FAILED,
        "Nothing was changed. If it is still needed, request it again against the current state.",
    ),
    ProblemCode.NOT_FOUND: ("Not found", OutcomeKind.REFUSED, "Check the ID and try again."),
    ProblemCode.BACKEND_REJECTED: (
        "Refused by the backend",
        OutcomeKind.FAILED,
        "The service that runs this action refused it; nothing was changed there. Check the "
        "record's current state against the reason above.",
    ),
    ProblemCode.BACKEND_UNAVAILABLE: (
        "The backend is unavailable",
        OutcomeKind.FAILED,
        "The service that runs this action could not be reached; nothing was done. Try again "
        "in a few minutes, or quote the request ID to engineering if it persists.",
    ),
    ProblemCode.BACKEND_TIMEOUT: (
        "Outcome unknown",
        OutcomeKind.PENDING,
        "The service that runs this action did not answer in time: it may or may not have "
        "done it. Do not repeat it. opsgate asks the service again within minutes and records "
        "the answer under this request ID (audit log, result 'reconciled').",
    ),
}


def refused(error: OpsgateError, request_id: str) -> Outcome:
    """The gateway's (or the approvals') refusal, said plainly."""
    title, kind, next_step = _REFUSALS.get(
        error.code,
        ("Failed", OutcomeKind.FAILED, "Quote the request ID to engineering."),
    )
    ids = []
    if execution := error.extra.get("execution_request_id"):
        ids.append(("Execution request ID", str(execution)))
    if call := error.extra.get("backend_call_id"):
        ids.append(("Backend call", str(call)))
    if error.code == ProblemCode.DOMAIN_REJECTED and execution:
        title = "Approved, but the action failed"
    return Outcome(
        kind=kind,
        title=title,
        message=error.detail,
        request_id=request_id,
        next_step=next_step,
        ids=tuple(ids),
        field_errors=field_errors(error.errors),
        status=error.status,
    )


def crashed(request_id: str) -> Outcome:
    return Outcome(
        kind=OutcomeKind.FAILED,
        title="Failed on the server",
        message=(
            "The action failed with an internal error, which is logged and audited. Its "
            "effects were rolled back: nothing was changed."
        ),
        request_id=request_id,
        next_step="Quote the request ID to engineering before trying again.",
        status=500,
    )


def replayed(label: str, status: int, body: Mapping[str, Any], now: datetime) -> Outcome:
    """The stored first answer to a form submitted again: it did not run twice."""
    request_id = str(body.get("request_id", ""))
    if status >= 400:
        error = OpsgateError(str(body.get("detail", "")))
        code = str(body.get("code", ""))
        error.code = ProblemCode(code) if code in set(ProblemCode) else ProblemCode.INTERNAL_ERROR
        first = refused(error, request_id)
    elif body.get("approval_id"):
        first = pending(label, None, str(body["approval_id"]), request_id, now)
    else:
        first = executed(label, body.get("result"), request_id)
    return Outcome(
        kind=first.kind,
        title=f"Already submitted: {first.title.lower()}",
        message=(
            f"{first.message} This form had already been submitted; this is the answer to that "
            "first submission (its request ID is below). It did not run again."
        ),
        request_id=request_id,
        details=first.details,
        links=first.links,
        ids=first.ids,
        next_step=first.next_step,
        replayed=True,
    )


def decided(
    result: DecisionResult, approval: ApprovalRequest | None, label: str, now: datetime
) -> Outcome:
    """What a reviewer's approve or reject led to."""
    ids: tuple[tuple[str, str], ...] = ()
    if result.execution_request_id:
        ids = (("Execution request ID", result.execution_request_id),)
    status = result.status
    if status == ApprovalStatus.SUCCEEDED:
        return Outcome(
            kind=OutcomeKind.EXECUTED,
            title="Approved and executed",
            message=f"{label}: approved by quorum ({result.approvals} of {result.quorum}) and "
            "executed.",
            request_id=result.request_id,
            details=result_details(result.result),
            ids=ids,
        )
    if status == ApprovalStatus.PENDING:
        needed = result.quorum - result.approvals
        waiting = _waiting_for(approval, now) if approval is not None else ""
        return Outcome(
            kind=OutcomeKind.RECORDED,
            title="Your approval is recorded",
            message=f"{result.approvals} of {result.quorum} approvals; {needed} more needed. "
            f"{waiting}",
            request_id=result.request_id,
        )
    if status == ApprovalStatus.REJECTED:
        return Outcome(
            kind=OutcomeKind.EXECUTED,
            title="Rejected",
            message=f"{label}: rejected. Nothing will run; the requester sees your comment.",
            request_id=result.request_id,
        )
    if status == ApprovalStatus.CANCELLED:
        return Outcome(
            kind=OutcomeKind.EXECUTED,
            title="Cancelled",
            message=f"{label}: cancelled. Nothing will run.",
            request_id=result.request_id,
        )
    return Outcome(
        kind=OutcomeKind.RECORDED,
        title="Decision recorded",
        message=f"Your decision is recorded; the request is now {status}.",
        request_id=result.request_id,
        ids=ids,
        next_step="Reload the request to follow it.",
    )
