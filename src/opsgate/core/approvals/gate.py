"""Deciding approval requests and executing approved ones: segregation of duties, quorum,
and controlled execution (DESIGN.md invariants 3 and 4).

Rules with no switch: nobody decides their own request (by any token or role, admin
included), nor one whose target is themselves; one person counts once; one qualifying
rejection rejects. An approval executes at most once, only from `approved`, only while
unexpired, and only with the payload, target version and policy version that were approved
and while the requester may still start the action; otherwise it becomes `stale`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsgate.core import metrics
from opsgate.core.actions.gateway import Gateway, domain_refusal, failed_entry
from opsgate.core.actions.policy import Capability
from opsgate.core.actions.registry import RiskClass, TargetRef
from opsgate.core.approvals.states import ApprovalStatus, check_transition
from opsgate.core.approvals.step_up import ADVICE
from opsgate.core.approvals.step_up import check as check_step_up
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.audit.redaction import redact, sensitive_fields
from opsgate.core.canonical import digest
from opsgate.core.errors import (
    ApprovalExpired,
    ApprovalNotPending,
    DomainError,
    Forbidden,
    InvalidPayload,
    NotFound,
    OpsgateError,
    SelfApproval,
    StaleApproval,
    StepUpRequired,
    TargetUnavailable,
)
from opsgate.core.faults import FaultPoint, reach
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.ids import new_id
from opsgate.core.integrations import outbox, remote, remote_targets
from opsgate.core.integrations.backends import BackendRequest, derive_key
from opsgate.core.integrations.config import Backend
from opsgate.core.integrations.remote_targets import RemoteRecord
from opsgate.core.request_ids import new_request_id
from opsgate.db.models import ApprovalDecision, ApprovalRequest, ApprovalView, User

MAX_COMMENT_LENGTH = 2000
S = ApprovalStatus


@dataclass(frozen=True)
class Fetched:
    """A remote target's record read before a transaction (None: the service has none)."""

    record: RemoteRecord | None


class Decision:
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class DecisionResult:
    """The state of a request after a decision, and the execution it triggered, if any."""

    approval_id: str
    status: str
    request_id: str
    approvals: int
    quorum: int
    execution_request_id: str | None = None
    result: dict[str, Any] | None = None
    audit_id: str | None = None


@dataclass
class _Decided:
    """A decision's audit record, to be written in the decision's transaction; `audit_id`
    is set once it is."""

    entry: AuditEntry
    actor: Actor
    audit_id: str | None = None


def _entry(approval: ApprovalRequest, result: AuditResult, **fields: Any) -> AuditEntry:
    return AuditEntry(
        action=approval.action,
        result=result,
        target=approval.target,
        approval_id=approval.id,
        **fields,
    )


def _set_status(approval: ApprovalRequest, new: ApprovalStatus, detail: str | None = None) -> None:
    approval.status = check_transition(approval.status, new).value
    if detail is not None:
        approval.status_detail = detail


def _approve_count(session: Session, approval_id: str) -> int:
    """Distinct people who approved: one person counts once, whatever their roles."""
    return int(
        session.scalar(
            select(func.count(func.distinct(ApprovalDecision.approver_id))).where(
                ApprovalDecision.approval_id == approval_id,
                ApprovalDecision.decision == Decision.APPROVE,
            )
        )
        or 0
    )


def _requester_actor(session: Session, approval: ApprovalRequest) -> Actor | None:
    user = session.get(User, approval.requester_id)
    if user is None or not user.is_active:
        return None
    return Actor(id=user.id, name=user.display_name, roles=user.role_names())


class Approvals:
    """Decisions, cancellation, expiry and controlled execution, over the gateway's pieces."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        reauth_after: timedelta = timedelta(minutes=15),
        fault: FaultPoint | None = None,
    ) -> None:
        self.gateway = gateway
        # A money-moving approval needs a proof of identity no older than this (step-up).
        self.reauth_after = reauth_after
        self.fault = fault
        self.db = gateway.db
        self.policy = gateway.policy
        self.clock = gateway.clock

    # --- reading ------------------------------------------------------------------------

    def may_view(self, actor: Actor, approval: ApprovalRequest) -> bool:
        return (
            actor.id == approval.requester_id
            or self.policy.may_approve(actor.roles, approval.action)
            or self.policy.has(actor.roles, Capability.AUDIT_READ)
        )

    def open(self, approval_id: str, actor: Actor, origin: Origin) -> ApprovalRequest:
        """Load a request for `actor` to look at: expire it if due, note a reviewer's first
        view (for the rubber-stamp metric). Raise NotFound or Forbidden."""
        with self.db.writing() as session:
            approval = self._load(session, approval_id, actor, origin, AuditResult.DENIED)
            if not self.may_view(actor, approval):
                self._refuse_in(
                    session,
                    Forbidden("You may neither approve this request nor read the audit trail."),
                    _entry(approval, AuditResult.DENIED),
                    actor,
                    origin,
                )
            now = self.clock.now()
            self._expire_if_due(session, approval, origin, now)
            if actor.id != approval.requester_id and self.policy.may_approve(
                actor.roles, approval.action
            ):
                seen = session.get(ApprovalView, (approval.id, actor.id))
                if seen is None:
                    session.add(
                        ApprovalView(
                            approval_id=approval.id, viewer_id=actor.id, first_viewed_at=now
                        )
                    )
            session.commit()
            return approval

    def visible(
        self, session: Session, actor: Actor, *, status: str | None, limit: int
    ) -> list[ApprovalRequest]:
        """Requests `actor` may see, newest first: their own, those they may approve, or all
        for holders of `audit.read`."""
        stmt = select(ApprovalRequest)
        if status:
            stmt = stmt.where(ApprovalRequest.status == status)
        if not self.policy.has(actor.roles, Capability.AUDIT_READ):
            approvable = [
                name
                for name in self.gateway.registry.names()
                if self.policy.may_approve(actor.roles, name)
            ]
            stmt = stmt.where(
                (ApprovalRequest.requester_id == actor.id) | ApprovalRequest.action.in_(approvable)
            )
        stmt = stmt.order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc())
        return list(session.scalars(stmt.limit(limit)))

    # --- deciding -----------------------------------------------------------------------

    def decide(
        self,
        approval_id: str,
        actor: Actor,
        decision: str,
        comment: str | None,
        origin: Origin,
        *,
        step_up: str | None = None,
    ) -> DecisionResult:
        """Record `actor`'s approve or reject; on quorum, execute in the same transaction.

        Approving a money-moving request needs a fresh proof of identity
        (core/approvals/step_up.py):
        the console session's recent sign-in, or the `step_up` grant of an API token, spent
        here. Raises SelfApproval, Forbidden, InvalidPayload (reject without comment),
        ApprovalNotPending, ApprovalExpired, StepUpRequired, NotFound; and, from execution,
        StaleApproval or DomainRejected. Every refusal is audited.
        """
        comment = (comment or "").strip() or None
        result = AuditResult.APPROVED if decision == Decision.APPROVE else AuditResult.REJECTED
        # An approval may execute: a remote target is read now, before the transaction.
        fetched = (
            self._read_remote(approval_id, actor, origin)
            if result == AuditResult.APPROVED
            else None
        )
        with self.db.writing() as session:
            now = self.clock.now()
            approval = self._load(
                session, approval_id, actor, origin, AuditResult.DENIED, lock=True
            )
            approval_action, approval_target = approval.action, approval.target
            refusal = self._decision_refusal(approval, actor, decision, comment)
            if refusal is None and self._expire_if_due(session, approval, origin, now):
                session.commit()
                refusal = ApprovalExpired(
                    f"The request expired at {approval.expires_at.isoformat()}.",
                    extra={"approval_id": approval.id, "approval_status": approval.status},
                )
            outcome: dict[str, Any] = {"decision": decision}
            if refusal is None and decision == Decision.APPROVE and self._moves_money(approval):
                missing = check_step_up(
                    session,
                    actor,
                    step_up,
                    now=now,
                    max_age=self.reauth_after,
                    approval_id=approval.id,
                )
                if missing is not None:
                    outcome["step_up"] = missing.value
                    refusal = StepUpRequired(
                        "Approving a money-moving request needs a fresh proof of identity: "
                        f"{ADVICE[missing]}",
                        extra={
                            "approval_id": approval.id,
                            "approval_status": approval.status,
                            "step_up": missing.value,
                        },
                    )
            if refusal is not None:
                invalid = isinstance(refusal, InvalidPayload)
                self._refuse_in(
                    session,
                    refusal,
                    _entry(
                        approval,
                        AuditResult.INVALID if invalid else AuditResult.DENIED,
                        reason=comment,
                        outcome=outcome,
                    ),
                    actor,
                    origin,
                )
            session.add(
                ApprovalDecision(
                    id=new_id("apd"),
                    approval_id=approval.id,
                    approver_id=actor.id,
                    approver_name=actor.name,
                    approver_roles=sorted(actor.roles),
                    decision=decision,
                    comment=comment,
                    request_id=origin.request_id,
                    decided_at=now,
                )
            )
            try:
                session.flush()
            except IntegrityError:
                self._refuse_in(
                    session,
                    Forbidden(
                        "You have already decided this request; one person counts once.",
                        extra={"approval_id": approval_id},
                    ),
                    AuditEntry(
                        action=approval_action,
                        result=AuditResult.DENIED,
                        target=approval_target,
                        approval_id=approval_id,
                    ),
                    actor,
                    origin,
                )
            approvals = _approve_count(session, approval.id)
            if decision == Decision.REJECT:
                _set_status(approval, S.REJECTED, comment)
                approval.decided_at = now
            elif approvals >= approval.quorum:
                _set_status(approval, S.APPROVED)
                approval.decided_at = now
            recorded = _Decided(
                _entry(
                    approval,
                    result,
                    reason=comment,
                    outcome={
                        "status": approval.status,
                        "approvals": approvals,
                        "quorum": approval.quorum,
                    },
                ),
                actor,
            )
            self._notify(
                session, outbox.EventType.DECIDED, approval, origin, now, actor, decision, comment
            )
            decided = DecisionResult(
                approval_id=approval_id,
                status=approval.status,
                request_id=origin.request_id,
                approvals=approvals,
                quorum=approval.quorum,
            )
            label = metrics.action_label(self.gateway.registry, approval_action)
            if approval.status == S.APPROVED:
                # The approval that reaches quorum and its execution commit together (or, for
                # a remote backend, with the move to `executing` and the call's record): a
                # crash anywhere before that commit leaves the request pending, as if this
                # decision had never been made, so no request can sit `approved` with nobody
                # to run it. The decision's record is written just before the execution's, so
                # that locks are taken in execution's order (target rows, then the chain head).
                reach(self.fault, FaultPoint.BEFORE_EXECUTION)
                try:
                    executed = self._execute_locked(
                        session, approval, origin, decided, recorded, fetched
                    )
                except BaseException as exc:
                    metrics.observe_execution(label, metrics.result_of(exc))
                    raise
                finally:
                    self._decision_done(recorded, approval, label, now)
                metrics.observe_execution(label, executed.status)
                return executed
            self._record_decision(session, recorded, origin, now)
            session.commit()
        self._decision_done(recorded, approval, label, now)
        return replace(decided, audit_id=recorded.audit_id)

    def _record_decision(
        self, session: Session, recorded: _Decided | None, origin: Origin, now: datetime
    ) -> None:
        if recorded is not None:
            row = self.gateway.write_audit(session, recorded.entry, recorded.actor, origin, now)
            recorded.audit_id = row.id

    def _decision_done(
        self, recorded: _Decided, approval: ApprovalRequest, label: str, now: datetime
    ) -> None:
        """Log and count a decision once it is committed (its record exists)."""
        if recorded.audit_id is None:
            return
        entry = recorded.entry
        self.gateway.log_action(recorded.actor, entry, entry.result, recorded.audit_id)
        status = (entry.outcome or {}).get("status")
        if status in metrics.DECISIONS:
            metrics.observe_decision(label, status, (now - approval.created_at).total_seconds())

    def _decision_refusal(
        self, approval: ApprovalRequest, actor: Actor, decision: str, comment: str | None
    ) -> OpsgateError | None:
        ids = {"approval_id": approval.id, "approval_status": approval.status}
        if decision not in (Decision.APPROVE, Decision.REJECT):
            return InvalidPayload(f"Unknown decision {decision!r}.")
        if comment is not None and len(comment) > MAX_COMMENT_LENGTH:
            return InvalidPayload(
                f"A comment is at most {MAX_COMMENT_LENGTH} characters.",
                errors=[{"loc": ["body", "comment"], "msg": "too long"}],
            )
        if decision == Decision.REJECT and comment is None:
            return InvalidPayload(
                "A rejection needs a comment saying why.",
                errors=[{"loc": ["body", "comment"], "msg": "required to reject"}],
            )
        # Segregation of duties comes first and has no switch: not the requester, by any
        # token or role, and not the person the request is about.
        if actor.id == approval.requester_id:
            return SelfApproval("You cannot decide a request you made.", extra=ids)
        target = TargetRef.parse(approval.target)
        if target.kind == "user" and target.id == actor.id:
            return SelfApproval("You cannot decide a request that concerns yourself.", extra=ids)
        if not self.policy.may_approve(actor.roles, approval.action):
            roles = ", ".join(approval.approver_roles)
            return Forbidden(f"Approving {approval.action} needs one of: {roles}.", extra=ids)
        if approval.status != S.PENDING:
            return ApprovalNotPending(f"The request is {approval.status}.", extra=ids)
        return None

    def cancel(self, approval_id: str, actor: Actor, origin: Origin) -> DecisionResult:
        """The requester withdraws a pending request."""
        with self.db.writing() as session:
            now = self.clock.now()
            approval = self._load(
                session, approval_id, actor, origin, AuditResult.DENIED, lock=True
            )
            ids = {"approval_id": approval.id, "approval_status": approval.status}
            refusal: OpsgateError | None = None
            if actor.id != approval.requester_id:
                refusal = Forbidden("Only the requester may cancel a request.", extra=ids)
            elif self._expire_if_due(session, approval, origin, now):
                session.commit()
                refusal = ApprovalExpired("The request has already expired.", extra=ids)
            elif approval.status != S.PENDING:
                refusal = ApprovalNotPending(f"The request is {approval.status}.", extra=ids)
            if refusal is not None:
                self._refuse_in(
                    session, refusal, _entry(approval, AuditResult.DENIED), actor, origin
                )
            _set_status(approval, S.CANCELLED)
            approval.decided_at = now
            row = self.gateway.write_audit(
                session, _entry(approval, AuditResult.CANCELLED), actor, origin, now
            )
            session.commit()
            return DecisionResult(
                approval_id=approval.id,
                status=approval.status,
                request_id=origin.request_id,
                approvals=_approve_count(session, approval.id),
                quorum=approval.quorum,
                audit_id=row.id,
            )

    # --- expiry -------------------------------------------------------------------------

    def _expire_if_due(
        self, session: Session, approval: ApprovalRequest, origin: Origin, now: datetime
    ) -> bool:
        if approval.status not in (S.PENDING, S.APPROVED) or approval.expires_at > now:
            return False
        _set_status(approval, S.EXPIRED, f"expired at {approval.expires_at.isoformat()}")
        self.gateway.write_audit(session, _entry(approval, AuditResult.EXPIRED), None, origin, now)
        self._notify(session, outbox.EventType.EXPIRED, approval, origin, now)
        return True

    def expire_due(self, origin: Origin) -> list[str]:
        """Expire every pending or approved request past its expiry; return their IDs."""
        expired = []
        now = self.clock.now()
        with self.db.reading() as session:
            due = list(
                session.scalars(
                    select(ApprovalRequest.id).where(
                        ApprovalRequest.status.in_([S.PENDING, S.APPROVED]),
                        ApprovalRequest.expires_at <= now,
                    )
                )
            )
        for approval_id in due:
            with self.db.writing() as session:
                approval = session.get(ApprovalRequest, approval_id, with_for_update=True)
                if approval is not None and self._expire_if_due(session, approval, origin, now):
                    session.commit()
                    expired.append(approval_id)
        return expired

    def recover(self, origin: Origin, *, approved_before: datetime) -> list[tuple[str, str]]:
        """Execute (or expire) every request left `approved`, at or before `approved_before`,
        by an executor that died; return (approval ID, status) for each one handled.

        Only an older opsgate leaves such a request (today's `decide` commits the approval
        with its execution). Each goes through `execute`: its row lock and compare-and-set
        let one process run it once, with every re-check, however many recover at once.
        """
        with self.db.reading() as session:
            stranded = list(
                session.scalars(
                    select(ApprovalRequest.id)
                    .where(
                        ApprovalRequest.status == S.APPROVED,
                        ApprovalRequest.decided_at <= approved_before,
                    )
                    .order_by(ApprovalRequest.decided_at)
                )
            )
        handled = []
        for approval_id in stranded:
            nothing = DecisionResult(approval_id, S.APPROVED.value, origin.request_id, 0, 0)
            try:
                done = self.execute(approval_id, origin, nothing)
            except OpsgateError as exc:
                handled.append((approval_id, str(exc.extra.get("approval_status", exc.code))))
                continue
            if done.execution_request_id is not None:  # None: another process ran it
                handled.append((approval_id, done.status))
        return handled

    # --- controlled execution -----------------------------------------------------------

    def execute(self, approval_id: str, origin: Origin, decided: DecisionResult) -> DecisionResult:
        """Run an `approved` request exactly once, under a fresh execution request ID; a
        request already past `approved` is left alone and its status returned.

        `decide` runs the execution in the approving transaction, so this finds work only
        for requests approved by an older opsgate that died before executing them
        (`opsgate approvals recover`). Raises ApprovalExpired, StaleApproval (handler not
        run), DomainRejected (handler refused; status `failed`).
        """
        fetched = self._read_remote(approval_id, None, origin)
        with self.db.writing() as session:
            now = self.clock.now()
            approval = session.get(ApprovalRequest, approval_id, with_for_update=True)
            if approval is None or approval.status != S.APPROVED:
                return replace(decided, status=approval.status if approval else "missing")
            if self._expire_if_due(session, approval, origin, now):
                session.commit()
                raise ApprovalExpired(
                    "The request expired before it could execute.",
                    extra={"approval_id": approval_id, "approval_status": S.EXPIRED.value},
                )
            return self._execute_locked(session, approval, origin, decided, None, fetched)

    def _execute_locked(
        self,
        session: Session,
        approval: ApprovalRequest,
        origin: Origin,
        decided: DecisionResult,
        recorded: _Decided | None,
        fetched: Fetched | None = None,
    ) -> DecisionResult:
        """Execute `approval`, locked and `approved` in `session`, and commit; `recorded` is
        the approving decision, whose record is written (and committed) with the execution;
        `fetched`, a remote target's record read before the transaction.

        Compare-and-set approved→executing decides the one executor; the other checks and the
        handler run in the same transaction, so a loser sees a final status.
        """
        approval_id = approval.id
        execution_id = new_request_id()
        now = self.clock.now()
        won = session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id, ApprovalRequest.status == S.APPROVED)
            .values(status=check_transition(S.APPROVED, S.EXECUTING).value)
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            # Only `execute` can lose: `decide` set `approved` itself under the row lock, and
            # rolling back here would silently drop its decision.
            assert recorded is None, "the approving transaction lost its own compare-and-set"
            session.rollback()
            return replace(decided, status=self._status_of(approval_id))
        approval.status = S.EXECUTING.value
        approval.execution_request_id = execution_id
        run_origin = replace(origin, request_id=approval.request_id)
        base = _entry(
            approval,
            AuditResult.SUCCEEDED,
            parameters=redact(approval.payload, self._sensitive(approval.action)),
            reason=approval.reason,
            execution_request_id=execution_id,
        )
        checked = self._recheck(session, approval, fetched)
        if isinstance(checked, str):
            _set_status(approval, S.STALE, checked)
            approval.executed_at = now
            requester = _requester_actor(session, approval)
            self._record_decision(session, recorded, origin, now)
            self.gateway.write_audit(
                session,
                replace(
                    base,
                    result=AuditResult.STALE,
                    error_code="stale_approval",
                    error_message=checked,
                ),
                requester,
                run_origin,
                now,
            )
            self._notify(session, outbox.EventType.EXECUTED, approval, run_origin, now)
            session.commit()
            raise StaleApproval(
                f"Not executed: {checked}.",
                extra={
                    "approval_id": approval_id,
                    "approval_status": S.STALE.value,
                    "execution_request_id": execution_id,
                },
            )
        requester, spec, obj, payload = checked
        backend = self.gateway.integrations.backend_for(spec.name)
        if backend is not None:
            self._record_decision(session, recorded, origin, now)
            return self._execute_remote(
                session, backend, approval, requester, base, run_origin, decided, now
            )
        ctx = self.gateway.context(
            session, requester, spec.name, execution_id, approval.reason, now, approval.id
        )
        failure: Exception | None = None
        try:
            # A savepoint: a refusing handler's effects are undone, while the status
            # change that makes this the one execution stays in the transaction.
            with session.begin_nested():
                execution = self.gateway.run_handler(ctx, spec, obj, payload)
        except DomainError as exc:
            failure = exc
            entry = failed_entry(base, exc)
        except Exception as exc:
            failure = exc
            message = f"internal error ({type(exc).__name__})"
            entry = replace(
                base,
                result=AuditResult.FAILED,
                error_code="internal_error",
                error_message=message,
            )
        if failure is not None:
            _set_status(approval, S.FAILED, entry.error_message)
            approval.executed_at = now
            approval.error_code = entry.error_code
            approval.error_message = entry.error_message
            self._record_decision(session, recorded, origin, now)
            row = self.gateway.write_audit(session, entry, requester, run_origin, now)
            self._notify(session, outbox.EventType.EXECUTED, approval, run_origin, now)
            session.commit()
            self.gateway.log_action(requester, entry, AuditResult.FAILED, row.id)
            if isinstance(failure, DomainError):
                raise domain_refusal(
                    failure,
                    approval_id=approval_id,
                    approval_status=S.FAILED.value,
                    execution_request_id=execution_id,
                ) from failure
            raise failure
        _set_status(approval, S.SUCCEEDED)
        approval.executed_at = now
        approval.result = dict(execution.outcome.result)
        self._record_decision(session, recorded, origin, now)
        row = self.gateway.write_audit(
            session, replace(base, **execution.audit_fields()), requester, run_origin, now
        )
        self._notify(session, outbox.EventType.EXECUTED, approval, run_origin, now)
        session.commit()
        self.gateway.log_action(requester, base, AuditResult.SUCCEEDED, row.id)
        return replace(
            decided,
            status=S.SUCCEEDED.value,
            execution_request_id=execution_id,
            result=dict(execution.outcome.result),
            audit_id=row.id,
        )

    def _execute_remote(
        self,
        session: Session,
        backend: Backend,
        approval: ApprovalRequest,
        requester: Actor,
        base: AuditEntry,
        run_origin: Origin,
        decided: DecisionResult,
        now: datetime,
    ) -> DecisionResult:
        """Execute an approved request in its backend (core/integrations/remote.py). The status is
        already
        `executing` in this transaction; it commits with the call's record before the call,
        so no other executor can start it, and the answer settles it in a new transaction.
        An unknown outcome leaves it `executing` until reconciliation learns the answer."""
        approval_id = approval.id
        execution_id = approval.execution_request_id
        request = BackendRequest(
            action=approval.action,
            target=approval.target,
            payload=dict(approval.payload),
            reason=approval.reason,
            actor_id=requester.id,
            actor_name=requester.name,
            actor_roles=tuple(sorted(requester.roles)),
            request_id=approval.request_id,
            approval_id=approval_id,
            execution_request_id=execution_id,
            idempotency_key=derive_key(
                actor_id=requester.id, action=approval.action, approval_id=approval_id
            ),
            trace_id=run_origin.trace_id,
            target_version=approval.target_version if self._remote(approval) else None,
        )
        call_id = remote.begin(session, backend, request, self._sensitive(approval.action), now)
        session.commit()

        answer = remote.call(self.gateway.backends, backend, request)

        with self.db.writing() as session:
            now = self.clock.now()
            call = remote.settle(session, self.gateway.registry, call_id, answer, now)
            settling = session.get(ApprovalRequest, approval_id, with_for_update=True)
            assert settling is not None
            approval = settling
            entry = remote.audit_entry(base, call, answer)
            if answer.outcome == "succeeded":
                _set_status(approval, S.SUCCEEDED)
                approval.executed_at = now
                approval.result = dict((answer.body or {}).get("result") or {})
            elif answer.outcome == "unknown":
                approval.status_detail = (
                    "The backend's answer never came; the outcome is unknown until "
                    "reconciliation asks it again (within minutes, or `opsgate reconcile`)."
                )
            else:
                _set_status(approval, S.FAILED, entry.error_message)
                approval.executed_at = now
                approval.error_code = entry.error_code
                approval.error_message = entry.error_message
            status = approval.status
            result = approval.result
            if status != S.EXECUTING.value:  # unknown: notified once reconciled
                self._notify(session, outbox.EventType.EXECUTED, approval, run_origin, now)
            row = self.gateway.write_audit(session, entry, requester, run_origin, now)
            session.commit()
        self.gateway.log_action(requester, entry, entry.result, row.id)
        if answer.outcome == "succeeded":
            return replace(
                decided,
                status=status,
                execution_request_id=execution_id,
                result=dict(result or {}),
                audit_id=row.id,
            )
        error = remote.problem_of(answer)
        error.extra |= {
            "approval_id": approval_id,
            "approval_status": status,
            "execution_request_id": execution_id,
            "backend_call_id": call_id,
        }
        raise error

    def _read_remote(self, approval_id: str, actor: Actor | None, origin: Origin) -> Fetched | None:
        """For a request on a remote target kind, its record as the service reports it now,
        read before any transaction opens (no lock across the network); None for a local
        kind. An unreadable target refuses the decision (audited): nothing is recorded."""
        with self.db.reading() as session:
            approval = session.get(ApprovalRequest, approval_id)
            if approval is None or approval.status not in (S.PENDING, S.APPROVED):
                return None
            action, target_text = approval.action, approval.target
        target = TargetRef.parse(target_text)
        kind = self.gateway.registry.target_kind(target.kind)
        if kind is None or kind.remote is None:
            return None
        try:
            record = remote_targets.fetch(
                self.gateway.backends,
                self.gateway.integrations,
                kind,
                target.id,
                request_id=origin.request_id,
                trace_id=origin.trace_id,
            )
        except TargetUnavailable as exc:
            exc.extra |= {"approval_id": approval_id}
            entry = AuditEntry(
                action=action,
                result=AuditResult.FAILED,
                target=target_text,
                approval_id=approval_id,
            )
            self.gateway.refuse(exc, entry, actor, origin)
        return Fetched(record)

    def _recheck(
        self, session: Session, approval: ApprovalRequest, fetched: Fetched | None
    ) -> str | tuple[Any, ...]:
        """Everything approved must still hold; return why not, or what to run."""
        if approval.policy_version != self.policy.version:
            return "the policy changed since the request was made"
        if digest(approval.payload) != approval.payload_hash:
            return "the stored payload no longer matches its hash"
        requester = _requester_actor(session, approval)
        if requester is None or not self.policy.may_start(requester.roles, approval.action):
            return "the requester may no longer start this action"
        spec = self.gateway.registry.get(approval.action)
        if spec is None:
            return "the action no longer exists"
        try:
            payload = spec.payload_model.model_validate(approval.payload)
        except ValueError:
            return "the stored payload is no longer valid for the action"
        target = TargetRef.parse(approval.target)
        kind = self.gateway.registry.target_kind(target.kind)
        if kind is not None and kind.remote is not None:
            assert fetched is not None, "a remote target is read before the transaction"
            obj: object | None = fetched.record
        else:
            obj = kind.load(session, target.id, True) if kind else None
        if kind is None or obj is None:
            return "the target no longer exists"
        if kind.snapshot(obj)["version"] != approval.target_version:
            return "the target changed since the request was made"
        return requester, spec, obj, payload

    # --- helpers ------------------------------------------------------------------------

    def _load(
        self,
        session: Session,
        approval_id: str,
        actor: Actor,
        origin: Origin,
        result: AuditResult,
        *,
        lock: bool = False,
    ) -> ApprovalRequest:
        approval = session.get(ApprovalRequest, approval_id, with_for_update=lock or None)
        if approval is None:
            session.rollback()
            self.gateway.refuse(
                NotFound(f"No approval request {approval_id[:64]}."),
                AuditEntry(
                    action="approval.read",
                    result=AuditResult.INVALID,
                    target=f"approval:{approval_id[:64]}",
                ),
                actor,
                origin,
            )
        return approval

    def _refuse_in(
        self,
        session: Session,
        error: OpsgateError,
        entry: AuditEntry,
        actor: Actor,
        origin: Origin,
    ) -> NoReturn:
        # Build the entry before this: rolling back expires loaded objects, and touching one
        # afterwards would open a new transaction on this session.
        session.rollback()
        session.close()
        self.gateway.refuse(error, entry, actor, origin)

    def _notify(
        self,
        session: Session,
        event_type: outbox.EventType,
        approval: ApprovalRequest,
        origin: Origin,
        now: datetime,
        decided_by: Actor | None = None,
        decision: str | None = None,
        comment: str | None = None,
    ) -> None:
        """Enqueue a webhook event in this transaction (core/integrations/outbox.py)."""
        outbox.notify_approval(
            session,
            self.gateway.integrations,
            event_type,
            approval,
            origin=origin,
            now=now,
            sensitive=self._sensitive(approval.action),
            decided_by=decided_by,
            decision=decision,
            comment=comment,
        )

    def _remote(self, approval: ApprovalRequest) -> bool:
        kind = self.gateway.registry.target_kind(TargetRef.parse(approval.target).kind)
        return kind is not None and kind.remote is not None

    def _moves_money(self, approval: ApprovalRequest) -> bool:
        spec = self.gateway.registry.get(approval.action)
        return spec is not None and spec.risk == RiskClass.MONEY_MOVING

    def _sensitive(self, action: str) -> frozenset[str]:
        spec = self.gateway.registry.get(action)
        return sensitive_fields(spec.payload_model) if spec else frozenset()

    def _status_of(self, approval_id: str) -> str:
        with self.db.reading() as session:
            return str(
                session.scalar(
                    select(ApprovalRequest.status).where(ApprovalRequest.id == approval_id)
                )
            )


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(ApprovalRequest.status, func.count()).group_by(ApprovalRequest.status)
    )
    return {status: int(n) for status, n in rows}
