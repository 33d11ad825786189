"""The gateway: the one path every operator action takes.

    actor ─► action (registry) ─► may start? (policy) ─► Idempotency-Key present if needed?
      ─► valid envelope and payload? ─► claim the key (or replay its stored answer)
      ─► target exists? (row-locked; a remote kind's record is read from its service first,
           outside any transaction) ─► usage limits ─► approval gate (off/monitor/enforce)
           ├─ gate applies: store an approval request, audit it, answer pending
           └─ otherwise: handler + audit record (+ stored answer) in ONE transaction

Every refusal on that path is audited with the caller's request ID before it is raised, and a
handler's partial effects are rolled back before its refusal is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NoReturn

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from opsgate.core import metrics
from opsgate.core.actions import aggregates, limits, near_duplicates
from opsgate.core.actions.conditions import Facts
from opsgate.core.actions.idempotency import ClaimLost, Idempotency, Replay, check_key, request_hash
from opsgate.core.actions.input_checks import UnsafeInput, check_value, load_json
from opsgate.core.actions.policy import ControlMode, Policy
from opsgate.core.actions.registry import (
    ActionContext,
    ActionSpec,
    Outcome,
    Registry,
    RiskClass,
    TargetRef,
)
from opsgate.core.approvals.requests import open_request
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.audit.redaction import redact, sensitive_fields
from opsgate.core.clock import Clock
from opsgate.core.errors import (
    BackendRejected,
    DomainError,
    DomainRejected,
    Forbidden,
    IdempotencyInFlight,
    InvalidPayload,
    LimitExceeded,
    OpsgateError,
    TargetBusy,
    TargetNotFound,
    TargetUnavailable,
    UnknownAction,
    error_body,
)
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.integrations import outbox, remote, remote_targets
from opsgate.core.integrations.backends import BackendClient, BackendRequest, derive_key
from opsgate.core.integrations.config import NO_INTEGRATIONS, Backend, Integrations
from opsgate.core.request_ids import new_request_id
from opsgate.db.engine import Database, is_timeout
from opsgate.db.models import AuditRecord

log = structlog.get_logger("opsgate.gateway")

MAX_REASON_LENGTH = 1000


class ActionEnvelope(BaseModel):
    """The body of `POST /actions/{name}`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    target: str = Field(min_length=3, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    reason: str = Field(min_length=1, max_length=MAX_REASON_LENGTH)


@dataclass(frozen=True)
class ActionResult:
    """What the caller is told: executed (`succeeded`) or waiting (`pending_approval`)."""

    status: str
    request_id: str
    audit_id: str
    result: Mapping[str, Any] | None = None
    approval_id: str | None = None
    replayed: bool = False

    @property
    def http_status(self) -> int:
        return 202 if self.approval_id is not None else 200

    def body(self) -> dict[str, Any]:
        if self.approval_id is not None:
            return {
                "status": self.status,
                "approval_id": self.approval_id,
                "request_id": self.request_id,
                "audit_id": self.audit_id,
            }
        return {
            "status": self.status,
            "request_id": self.request_id,
            "result": dict(self.result or {}),
            "audit_id": self.audit_id,
        }


@dataclass(frozen=True)
class Replayed:
    """The stored first answer to a request repeated with the same Idempotency-Key."""

    http_status: int
    stored: dict[str, Any]
    replayed: bool = True

    def body(self) -> dict[str, Any]:
        return self.stored


@dataclass(frozen=True)
class KeyClaim:
    """An Idempotency-Key held by the request being run (`owner`, its request ID)."""

    actor_id: str
    key: str
    owner: str

    def store(self, session: Session, status: int, body: Mapping[str, Any]) -> None:
        """Store the answer in `session`; raise ClaimLost if a retry took the key over."""
        Idempotency.complete(session, self.actor_id, self.key, self.owner, status, body)

    def hold(self, session: Session, now: datetime) -> None:
        """Renew the claim in `session`; raise ClaimLost if a retry took the key over."""
        Idempotency.hold(session, self.actor_id, self.key, self.owner, now)


@dataclass(frozen=True)
class Execution:
    """A handler run inside an open transaction, not yet audited or committed."""

    outcome: Outcome
    before: dict[str, Any]
    after: dict[str, Any]

    def audit_fields(self) -> dict[str, Any]:
        changed = self.before != self.after
        return {
            "before": self.before if changed else None,
            "after": self.after if changed else None,
            "outcome": dict(self.outcome.audited),
        }


def validation_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as `{loc, msg, type}`, without echoing the rejected input back."""
    return [
        {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]


class Gateway:
    """Runs actions through the control layer. One instance per process, shared by threads."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        policy: Policy,
        clock: Clock,
        idempotency: Idempotency | None = None,
        integrations: Integrations = NO_INTEGRATIONS,
        backends: BackendClient | None = None,
    ) -> None:
        self.db = db
        self.integrations = integrations
        self.backends = backends or BackendClient()
        self.registry = registry
        self.policy = policy
        self.clock = clock
        self.idempotency = idempotency or Idempotency(
            db, retention=timedelta(hours=24), lock_timeout=timedelta(minutes=5)
        )

    def startable(self, actor: Actor) -> list[ActionSpec]:
        """The actions `actor` may start under the current policy, sorted by name."""
        return [s for s in self.registry.specs() if self.policy.may_start(actor.roles, s.name)]

    def submit(
        self,
        actor: Actor,
        action: str,
        body: bytes | Mapping[str, Any],
        origin: Origin,
        idempotency_key: str | None = None,
    ) -> ActionResult | Replayed:
        """Run `action` for `actor`, hold it for approval, replay its stored answer, or raise
        the refusal.

        Guarantees: the handler runs only after permission and validation passed; its effects,
        its audit record and its idempotent answer commit together or not at all; every
        refusal is audited. Counted and timed in `opsgate_actions_total` and
        `opsgate_action_duration_seconds` (core/metrics.py).
        """
        label = metrics.action_label(self.registry, action)
        started = time.perf_counter()
        with metrics.action_in_progress():
            try:
                answer = self._submit(actor, action, body, origin, idempotency_key)
            except BaseException as exc:
                metrics.observe_action(label, metrics.result_of(exc), time.perf_counter() - started)
                raise
        result = metrics.REPLAYED if isinstance(answer, Replayed) else answer.status
        metrics.observe_action(label, result, time.perf_counter() - started)
        return answer

    def _submit(
        self,
        actor: Actor,
        action: str,
        body: bytes | Mapping[str, Any],
        origin: Origin,
        idempotency_key: str | None,
    ) -> ActionResult | Replayed:
        spec = self.registry.get(action)
        if spec is None:
            self.refuse(
                UnknownAction(f"There is no action named {action[:128]!r}."),
                AuditEntry(action=action, result=AuditResult.INVALID),
                actor,
                origin,
            )
        if not self.policy.may_start(actor.roles, spec.name):
            allowed = ", ".join(self.policy.allowed_roles(spec.name)) or "no role"
            self.refuse(
                Forbidden(f"Your roles do not allow {spec.name}; it needs one of: {allowed}."),
                AuditEntry(action=spec.name, result=AuditResult.DENIED),
                actor,
                origin,
            )
        if spec.risk == RiskClass.READ:
            # Reads change nothing, and storing their answer would keep what they revealed
            # (e.g. PII) in a replayable copy: a key on a read is ignored.
            idempotency_key = None
        try:
            key = check_key(idempotency_key, required=spec.risk == RiskClass.MONEY_MOVING)
        except OpsgateError as exc:
            self.refuse(
                exc, AuditEntry(action=spec.name, result=AuditResult.INVALID), actor, origin
            )
        envelope, target, payload = self._validate(spec, body, actor, origin)
        try:
            return self._claim_and_execute(spec, envelope, target, payload, actor, origin, key)
        except DBAPIError as exc:
            if not is_timeout(exc):
                raise
            self._refuse_busy(spec.name, target, actor, origin)

    def _claim_and_execute(
        self,
        spec: ActionSpec,
        envelope: ActionEnvelope,
        target: TargetRef,
        payload: BaseModel,
        actor: Actor,
        origin: Origin,
        key: str | None,
    ) -> ActionResult | Replayed:
        if key is None:
            return self._execute(spec, envelope, target, payload, actor, origin, None)
        fingerprint = request_hash(spec.name, envelope.model_dump(mode="json"))
        try:
            replay = self.idempotency.claim(
                actor.id, key, spec.name, fingerprint, origin.request_id, self.clock.now()
            )
        except OpsgateError as exc:
            entry = AuditEntry(action=spec.name, result=AuditResult.INVALID, target=str(target))
            self.refuse(exc, entry, actor, origin)
        if replay is not None:
            return self._replay(spec.name, target, replay, actor, origin)
        claim = KeyClaim(actor.id, key, origin.request_id)
        try:
            return self._execute(spec, envelope, target, payload, actor, origin, claim)
        except ClaimLost:
            # A retry took the key over while this request was slow; this request's
            # transaction rolled back, so the retry's effect is the only one.
            return self._after_takeover(spec.name, target, key, actor, origin)
        except (DomainRejected, BackendRejected):
            raise  # a final refusal: its answer is stored with its audit record
        except BaseException:
            # Nothing committed: a corrected or later retry may use the key again.
            self.idempotency.release(actor.id, key, origin.request_id)
            raise

    def _refuse_busy(
        self, action: str, target: TargetRef, actor: Actor, origin: Origin
    ) -> NoReturn:
        """Refuse a request whose transaction hit its lock or statement timeout (db/engine.py):
        audited when the database lets us write; on SQLite the writer lock may still be held,
        and then the refusal is only logged."""
        error = TargetBusy(
            f"{target} is busy (another operation holds it) and this request gave up; "
            "retry shortly with the same Idempotency-Key, if any."
        )
        entry = AuditEntry(action=action, result=AuditResult.FAILED, target=str(target))
        try:
            self.audit_refusal(error, entry, actor, origin)
        except DBAPIError as exc:
            if not is_timeout(exc):
                raise
            log.warning("target_busy_unaudited", action=action, target=str(target))
        raise error

    def _replay(
        self, action: str, target: TargetRef, replay: Replay, actor: Actor, origin: Origin
    ) -> Replayed:
        # A retry is an attempt too: record who repeated what, and what they were told.
        self.audit_note(
            AuditEntry(
                action=action,
                result=AuditResult.REPLAYED,
                target=str(target),
                outcome={
                    "http_status": replay.status,
                    "original_request_id": replay.body.get("request_id"),
                },
            ),
            actor,
            origin,
        )
        return Replayed(replay.status, replay.body)

    def _after_takeover(
        self, action: str, target: TargetRef, key: str, actor: Actor, origin: Origin
    ) -> Replayed:
        """Answer a request whose claim was taken over: the stored answer of the request
        that took it, or `idempotency_in_flight` while that one still runs."""
        replay = self.idempotency.stored_answer(actor.id, key)
        if replay is not None:
            return self._replay(action, target, replay, actor, origin)
        self.refuse(
            IdempotencyInFlight(
                "This request took too long and a retry with the same Idempotency-Key took "
                "over; nothing of it was committed. Retry shortly to get the answer."
            ),
            AuditEntry(action=action, result=AuditResult.INVALID, target=str(target)),
            actor,
            origin,
        )

    def _validate(
        self, spec: ActionSpec, body: bytes | Mapping[str, Any], actor: Actor, origin: Origin
    ) -> tuple[ActionEnvelope, TargetRef, BaseModel]:
        def invalid(
            detail: str, errors: list[dict[str, Any]], target: str | None = None
        ) -> NoReturn:
            self.refuse(
                InvalidPayload(detail, errors=errors),
                AuditEntry(action=spec.name, result=AuditResult.INVALID, target=target),
                actor,
                origin,
            )

        try:
            if isinstance(body, bytes):
                body = load_json(body) if body.strip() else {}
            else:
                check_value(body)  # a console form or another caller: the same refusal
        except UnsafeInput as exc:
            # The offending value is not repeated: the refusal's record must be writable.
            invalid("The request body holds text opsgate cannot accept.", exc.errors)
        except ValueError as exc:  # UnicodeDecodeError included
            invalid("The request body is not valid JSON.", [{"loc": ["body"], "msg": str(exc)}])
        try:
            envelope = ActionEnvelope.model_validate(body)
        except ValidationError as exc:
            invalid("The request envelope is invalid.", validation_errors(exc, ("body",)))
        try:
            target = TargetRef.parse(envelope.target)
        except ValueError as exc:
            invalid(str(exc), [{"loc": ["body", "target"], "msg": str(exc)}])
        if target.kind != spec.target_kind:
            message = f"{spec.name} acts on a {spec.target_kind}, not a {target.kind}."
            invalid(message, [{"loc": ["body", "target"], "msg": message}], str(target))
        try:
            payload = spec.payload_model.model_validate(envelope.payload)
        except ValidationError as exc:
            invalid(
                f"The payload of {spec.name} is invalid.",
                validation_errors(exc, ("body", "payload")),
                str(target),
            )
        return envelope, target, payload

    def _execute(
        self,
        spec: ActionSpec,
        envelope: ActionEnvelope,
        target: TargetRef,
        payload: BaseModel,
        actor: Actor,
        origin: Origin,
        claim: KeyClaim | None,
    ) -> ActionResult:
        kind = self.registry.target_kind(spec.target_kind)
        assert kind is not None  # the registry refuses actions on unknown kinds
        params = payload.model_dump(mode="json")
        base = AuditEntry(
            action=spec.name,
            result=AuditResult.SUCCEEDED,
            target=str(target),
            parameters=redact(params, sensitive_fields(spec.payload_model)),
            reason=envelope.reason,
        )
        fetched = None
        if kind.remote is not None:
            # Read from its service before the transaction opens: no database lock is held
            # across the network. The service refuses a changed record by `target_version`.
            try:
                fetched = remote_targets.fetch(
                    self.backends,
                    self.integrations,
                    kind,
                    target.id,
                    request_id=origin.request_id,
                    trace_id=origin.trace_id,
                )
            except TargetUnavailable as exc:
                self.refuse(exc, replace(base, result=AuditResult.FAILED), actor, origin)
        with self.db.writing() as session:
            now = self.clock.now()
            # Reads need no lock; anything that changes the target locks it until commit.
            obj = (
                fetched
                if kind.remote is not None
                else kind.load(session, target.id, spec.risk != RiskClass.READ)
            )
            if obj is None:
                session.rollback()
                self.refuse(
                    TargetNotFound(f"No {target.kind} {target.id} exists."),
                    replace(base, result=AuditResult.INVALID),
                    actor,
                    origin,
                )
            use = aggregates.use_of(
                session,
                self.policy,
                kind,
                obj,
                action=spec.name,
                actor_id=actor.id,
                target=str(target),
                payload=params,
                money_moving=spec.risk == RiskClass.MONEY_MOVING,
            )
            # Cumulative figures (this target's, actor's, customer's requests, pending ones
            # included), taken under the locks that keep them, and the flags, true until commit.
            cumulative = aggregates.measure(session, self.policy, use, now)
            if spec.risk == RiskClass.MONEY_MOVING:
                flags = near_duplicates.flags(session, use, params, now)
                if flags:
                    base = replace(base, flags=flags)
            companions = self._limits(session, spec, base, actor, origin, params, now)
            ctx = self.context(session, actor, spec.name, origin.request_id, envelope.reason, now)
            facts = Facts(params, kind.snapshot(obj), cumulative, target_kind=target.kind)
            requirement = self.policy.approval_for(spec.name, facts)
            if requirement is not None and requirement.mode == ControlMode.ENFORCE:
                try:
                    approval = open_request(
                        ctx, spec, kind, obj, payload, str(target), requirement, self.policy.version
                    )
                except DomainError as exc:  # the preview already sees it cannot succeed
                    session.rollback()
                    self._refuse_domain(exc, base, actor, origin, claim, companions)
                approval.flags = dict(base.flags) if base.flags else None
                outbox.notify_approval(
                    session,
                    self.integrations,
                    outbox.EventType.REQUESTED,
                    approval,
                    origin=origin,
                    now=now,
                    sensitive=sensitive_fields(spec.payload_model),
                )
                entry = replace(
                    base,
                    result=AuditResult.APPROVAL_REQUESTED,
                    approval_id=approval.id,
                    outcome={"rule": requirement.describe(), "quorum": approval.quorum},
                )
                return self._accept(
                    session,
                    entry,
                    companions,
                    actor,
                    origin,
                    claim,
                    now,
                    use,
                    lambda audit_id: ActionResult(
                        status="pending_approval",
                        request_id=origin.request_id,
                        audit_id=audit_id,
                        approval_id=approval.id,
                    ),
                )
            if requirement is not None:  # monitor: run now, record what would have happened
                companions.append(
                    replace(
                        base,
                        result=AuditResult.WOULD_REQUIRE_APPROVAL,
                        outcome={"rule": requirement.describe()},
                    )
                )
            backend = self.integrations.backend_for(spec.name)
            if backend is not None:
                version = kind.snapshot(obj)["version"] if kind.remote is not None else None
                return self._execute_remote(
                    session, backend, spec, envelope, target, params, base, companions, actor,
                    origin, claim, now, use, version,
                )  # fmt: skip
            try:
                execution = self.run_handler(ctx, spec, obj, payload)
            except DomainError as exc:
                session.rollback()
                self._refuse_domain(exc, base, actor, origin, claim, companions)
            except Exception as exc:
                session.rollback()
                self._audit_crash(base, exc, actor, origin)
                raise
            return self._accept(
                session,
                replace(base, **execution.audit_fields()),
                companions,
                actor,
                origin,
                claim,
                now,
                use,
                lambda audit_id: ActionResult(
                    status="succeeded",
                    request_id=origin.request_id,
                    audit_id=audit_id,
                    result=execution.outcome.result,
                ),
            )

    def _accept(
        self,
        session: Session,
        entry: AuditEntry,
        companions: list[AuditEntry],
        actor: Actor,
        origin: Origin,
        claim: KeyClaim | None,
        now: datetime,
        use: aggregates.Use,
        result_for: Callable[[str], ActionResult],
    ) -> ActionResult:
        """Finish an accepted request in its transaction: its audit record and companions,
        its use toward limits, its idempotent answer; then commit."""
        row = self.write_audit(session, entry, actor, origin, now)
        for companion in companions:
            self.write_audit(session, companion, actor, origin, now)
        aggregates.record(session, use, origin.request_id, now, approval_id=entry.approval_id)
        result = result_for(row.id)
        if claim is not None:
            claim.store(session, result.http_status, result.body())
        session.commit()
        self.log_action(actor, entry, entry.result, row.id)
        return result

    def _execute_remote(
        self,
        session: Session,
        backend: Backend,
        spec: ActionSpec,
        envelope: ActionEnvelope,
        target: TargetRef,
        params: Mapping[str, Any],
        base: AuditEntry,
        companions: list[AuditEntry],
        actor: Actor,
        origin: Origin,
        claim: KeyClaim | None,
        now: datetime,
        use: aggregates.Use,
        target_version: int | None = None,
    ) -> ActionResult:
        """Run an accepted request in its backend (core/integrations/remote.py): record the call
        and the
        request's use toward limits and commit, call without a transaction open, then settle
        the call, mirror the new state, and write the audit record and the stored answer in
        one transaction. A backend refusal is final (stored); an unreachable backend did
        nothing (the key is released for a retry); an unknown outcome is recorded as such."""
        request = BackendRequest(
            action=spec.name,
            target=str(target),
            payload=dict(params),
            reason=envelope.reason,
            actor_id=actor.id,
            actor_name=actor.name,
            actor_roles=tuple(sorted(actor.roles)),
            request_id=origin.request_id,
            idempotency_key=derive_key(
                actor_id=actor.id,
                action=spec.name,
                client_key=claim.key if claim else None,
                request_id=origin.request_id,
            ),
            trace_id=origin.trace_id,
            target_version=target_version,
        )
        call_id = remote.begin(session, backend, request, sensitive_fields(spec.payload_model), now)
        for companion in companions:
            self.write_audit(session, companion, actor, origin, now)
        aggregates.record(session, use, origin.request_id, now)
        if claim is not None:
            claim.hold(session, now)  # no backend call for a request whose key was taken over
        session.commit()

        answer = remote.call(self.backends, backend, request)

        with self.db.writing() as session:
            now = self.clock.now()
            call = remote.settle(session, self.registry, call_id, answer, now)
            entry = remote.audit_entry(base, call, answer)
            row = self.write_audit(session, entry, actor, origin, now)
            if answer.outcome == "succeeded":
                result = ActionResult(
                    status="succeeded",
                    request_id=origin.request_id,
                    audit_id=row.id,
                    result=(answer.body or {}).get("result") or {},
                )
                if claim is not None:
                    claim.store(session, result.http_status, result.body())
                session.commit()
                self.log_action(actor, entry, entry.result, row.id)
                return result
            error = remote.problem_of(answer)
            error.extra |= {"backend_call_id": call_id}
            if claim is not None and answer.outcome == "rejected":
                claim.store(session, error.status, error_body(error, origin.request_id))
            session.commit()
        self.log_action(actor, entry, entry.result, row.id)
        raise error

    def _limits(
        self,
        session: Session,
        spec: ActionSpec,
        base: AuditEntry,
        actor: Actor,
        origin: Origin,
        params: Mapping[str, Any],
        now: datetime,
    ) -> list[AuditEntry]:
        """Refuse (enforce) or note (monitor) the usage limits this request breaks."""
        hits = limits.check(session, self.policy, spec.name, actor.id, params, now)
        enforced = [hit for hit in hits if hit.rule.mode == ControlMode.ENFORCE]
        if enforced:
            session.rollback()
            names = ", ".join(hit.rule.name for hit in enforced)
            self.refuse(
                LimitExceeded(
                    f"This would exceed your usage limit ({names}) for {spec.name}; wait for "
                    "the window to pass or ask someone else.",
                    extra={"limits": [hit.describe() for hit in enforced]},
                ),
                replace(
                    base,
                    result=AuditResult.LIMITED,
                    outcome={"limits": [hit.describe() for hit in enforced]},
                ),
                actor,
                origin,
            )
        return [
            replace(base, result=AuditResult.WOULD_BE_LIMITED, outcome={"limit": hit.describe()})
            for hit in hits
        ]

    def _refuse_domain(
        self,
        exc: DomainError,
        base: AuditEntry,
        actor: Actor,
        origin: Origin,
        claim: KeyClaim | None,
        companions: list[AuditEntry],
    ) -> NoReturn:
        error = domain_refusal(exc)
        store = None
        if claim is not None:

            def store(session: Session) -> None:
                claim.store(session, error.status, error_body(error, origin.request_id))

        self.refuse(error, failed_entry(base, exc), actor, origin, also=companions, then=store)

    def target_state(self, target: str, *, request_id: str | None = None) -> dict[str, Any] | None:
        """The target's state as a request would be judged on now (`snapshot`), read outside
        any write transaction: a local kind from the database, a remote kind from its service.
        None when `target` is no `kind:id`, names no record, or its service cannot say."""
        try:
            ref = TargetRef.parse(target)
        except ValueError:
            return None
        kind = self.registry.target_kind(ref.kind)
        if kind is None:
            return None
        if kind.remote is None:
            with self.db.reading() as session:
                obj = kind.load(session, ref.id, False)
                return kind.snapshot(obj) if obj is not None else None
        try:
            found = remote_targets.fetch(
                self.backends, self.integrations, kind, ref.id,
                request_id=request_id or new_request_id(),
            )  # fmt: skip
        except TargetUnavailable:
            return None
        return kind.snapshot(found) if found is not None else None

    # --- building blocks shared with controlled execution (core/approvals/gate.py) -------------

    def context(
        self,
        session: Session,
        actor: Actor,
        action: str,
        request_id: str,
        reason: str,
        now: datetime,
        approval_id: str | None = None,
    ) -> ActionContext:
        return ActionContext(
            session=session,
            actor=actor,
            action=action,
            request_id=request_id,
            reason=reason,
            now=now,
            approval_id=approval_id,
            known_roles=frozenset(self.policy.roles()),
        )

    def run_handler(
        self, ctx: ActionContext, spec: ActionSpec, obj: object, payload: BaseModel
    ) -> Execution:
        """Run the handler in the caller's transaction and capture the target's state around
        it. Exceptions propagate; the caller rolls back and audits."""
        kind = self.registry.target_kind(spec.target_kind)
        assert kind is not None
        before = kind.snapshot(obj)
        outcome = spec.handler(ctx, obj, payload)
        ctx.session.flush()
        return Execution(outcome=outcome, before=before, after=kind.snapshot(obj))

    def write_audit(
        self,
        session: Session,
        entry: AuditEntry,
        actor: Actor | None,
        origin: Origin,
        now: datetime,
    ) -> AuditRecord:
        return record(
            session, entry, actor=actor, origin=origin, policy_version=self.policy.version, now=now
        )

    def audit_refusal(
        self,
        error: OpsgateError,
        entry: AuditEntry,
        actor: Actor | None,
        origin: Origin,
        *,
        also: Iterable[AuditEntry] = (),
        then: Callable[[Session], None] | None = None,
    ) -> str:
        """Record a refusal (and any companion records) in its own transaction; return the
        refusal's audit record ID. `then` runs in that transaction (e.g. to store the answer
        of an idempotent request)."""
        completed = replace(
            entry,
            error_code=entry.error_code or error.code.value,
            error_message=entry.error_message or error.detail,
        )
        with self.db.writing() as session:
            now = self.clock.now()
            row = self.write_audit(session, completed, actor, origin, now)
            for extra in also:
                self.write_audit(session, extra, actor, origin, now)
            if then is not None:
                then(session)
            session.commit()
            audit_id = row.id
        self.log_action(actor, completed, entry.result, audit_id)
        return audit_id

    def audit_note(self, entry: AuditEntry, actor: Actor | None, origin: Origin) -> str:
        """Record something that changed nothing (a replay, a read) in its own transaction."""
        with self.db.writing() as session:
            row = self.write_audit(session, entry, actor, origin, self.clock.now())
            session.commit()
            audit_id = row.id
        self.log_action(actor, entry, entry.result, audit_id)
        return audit_id

    def refuse(
        self,
        error: OpsgateError,
        entry: AuditEntry,
        actor: Actor | None,
        origin: Origin,
        *,
        also: Iterable[AuditEntry] = (),
        then: Callable[[Session], None] | None = None,
    ) -> NoReturn:
        self.audit_refusal(error, entry, actor, origin, also=also, then=then)
        raise error

    def _audit_crash(self, entry: AuditEntry, exc: Exception, actor: Actor, origin: Origin) -> None:
        # The exception text may carry data from the database; record only its type.
        crash = OpsgateError(f"internal error ({type(exc).__name__})")
        self.audit_refusal(crash, replace(entry, result=AuditResult.FAILED), actor, origin)
        log.error("handler_crashed", action=entry.action, target=entry.target, exc_info=exc)

    def log_action(
        self, actor: Actor | None, entry: AuditEntry, result: AuditResult, audit_id: str
    ) -> None:
        log.info(
            "action",
            actor=actor.id if actor else None,
            action=entry.action[:128],
            target=entry.target,
            result=result.value,
            error_code=entry.error_code,
            approval_id=entry.approval_id,
            execution_request_id=entry.execution_request_id,
            audit_id=audit_id,
        )


def domain_refusal(exc: DomainError, **extra: Any) -> DomainRejected:
    return DomainRejected(exc.message, reason=exc.reason, extra=extra or None)


def failed_entry(entry: AuditEntry, exc: DomainError) -> AuditEntry:
    return replace(
        entry,
        result=AuditResult.FAILED,
        error_code=f"domain_rejected:{exc.reason}",
        error_message=exc.message,
    )
