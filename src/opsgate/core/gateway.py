"""The gateway: the one path every operator action takes.

    actor ─► action (registry) ─► may start? (policy) ─► valid envelope and payload?
      ─► target exists? (row-locked) ─► handler + audit record in ONE transaction ─► result

Every refusal on that path is audited with the caller's request ID before it is raised, and a
handler's partial effects are rolled back before its refusal is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opsgate.core.actors import Actor, Origin
from opsgate.core.audit import AuditEntry, AuditResult, record
from opsgate.core.clock import Clock
from opsgate.core.errors import (
    DomainError,
    DomainRejected,
    Forbidden,
    InvalidPayload,
    OpsgateError,
    TargetNotFound,
    UnknownAction,
)
from opsgate.core.policy import Policy
from opsgate.core.registry import ActionContext, ActionSpec, Registry, TargetRef
from opsgate.db.engine import Database

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
    """A successful execution: what the caller is told."""

    request_id: str
    result: Mapping[str, Any]
    audit_id: str
    status: str = "succeeded"


def validation_errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as `{loc, msg, type}`, without echoing the rejected input back."""
    return [
        {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]


class Gateway:
    """Runs actions through the control layer. One instance per process, shared by threads."""

    def __init__(self, db: Database, registry: Registry, policy: Policy, clock: Clock) -> None:
        self.db = db
        self.registry = registry
        self.policy = policy
        self.clock = clock

    def startable(self, actor: Actor) -> list[ActionSpec]:
        """The actions `actor` may start under the current policy, sorted by name."""
        return [s for s in self.registry.specs() if self.policy.may_start(actor.roles, s.name)]

    def submit(
        self, actor: Actor, action: str, body: bytes | Mapping[str, Any], origin: Origin
    ) -> ActionResult:
        """Run `action` for `actor`, or raise the OpsgateError that refused it.

        Guarantees: the handler runs only after permission and validation passed; its effects
        and its audit record commit together or not at all; every refusal is audited.
        """
        spec = self.registry.get(action)
        if spec is None:
            self._refuse(
                UnknownAction(f"There is no action named {action[:128]!r}."),
                AuditEntry(action=action, result=AuditResult.INVALID),
                actor,
                origin,
            )
        if not self.policy.may_start(actor.roles, spec.name):
            allowed = ", ".join(self.policy.allowed_roles(spec.name)) or "no role"
            self._refuse(
                Forbidden(f"Your roles do not allow {spec.name}; it needs one of: {allowed}."),
                AuditEntry(action=spec.name, result=AuditResult.DENIED),
                actor,
                origin,
            )
        envelope, target, payload = self._validate(spec, body, actor, origin)
        return self._execute(spec, envelope, target, payload, actor, origin)

    def _validate(
        self, spec: ActionSpec, body: bytes | Mapping[str, Any], actor: Actor, origin: Origin
    ) -> tuple[ActionEnvelope, TargetRef, BaseModel]:
        def invalid(
            detail: str, errors: list[dict[str, Any]], target: str | None = None
        ) -> NoReturn:
            self._refuse(
                InvalidPayload(detail, errors=errors),
                AuditEntry(action=spec.name, result=AuditResult.INVALID, target=target),
                actor,
                origin,
            )

        if isinstance(body, bytes):
            try:
                body = json.loads(body) if body.strip() else {}
            except (ValueError, UnicodeDecodeError) as exc:
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
    ) -> ActionResult:
        kind = self.registry.target_kind(spec.target_kind)
        assert kind is not None  # the registry refuses actions on unknown kinds
        parameters = payload.model_dump(mode="json")
        base = AuditEntry(
            action=spec.name,
            result=AuditResult.SUCCEEDED,
            target=str(target),
            parameters=parameters,
            reason=envelope.reason,
        )
        with self.db.writing() as session:
            now = self.clock.now()
            obj = kind.load(session, target.id, True)
            if obj is None:
                session.rollback()
                self._refuse(
                    TargetNotFound(f"No {target.kind} {target.id} exists."),
                    replace(base, result=AuditResult.INVALID),
                    actor,
                    origin,
                )
            before = kind.snapshot(obj)
            ctx = ActionContext(
                session=session,
                actor=actor,
                action=spec.name,
                request_id=origin.request_id,
                reason=envelope.reason,
                now=now,
            )
            try:
                outcome = spec.handler(ctx, obj, payload)
                session.flush()
            except DomainError as exc:
                session.rollback()
                self._refuse(
                    DomainRejected(exc.message, reason=exc.reason),
                    replace(
                        base,
                        result=AuditResult.FAILED,
                        error_code=f"domain_rejected:{exc.reason}",
                        error_message=exc.message,
                    ),
                    actor,
                    origin,
                )
            except Exception as exc:
                session.rollback()
                self._audit_crash(base, exc, actor, origin)
                raise
            after = kind.snapshot(obj)
            changed = before != after
            row = record(
                session,
                replace(
                    base,
                    before=before if changed else None,
                    after=after if changed else None,
                    outcome=dict(outcome.result),
                ),
                actor=actor,
                origin=origin,
                policy_version=self.policy.version,
                now=now,
            )
            session.commit()
        log.info(
            "action",
            actor=actor.id,
            action=spec.name,
            target=str(target),
            result=AuditResult.SUCCEEDED.value,
            audit_id=row.id,
        )
        return ActionResult(request_id=origin.request_id, result=outcome.result, audit_id=row.id)

    def audit_refusal(
        self, error: OpsgateError, entry: AuditEntry, actor: Actor | None, origin: Origin
    ) -> str:
        """Record a refusal in its own transaction and return the audit record ID."""
        with self.db.writing() as session:
            row = record(
                session,
                replace(
                    entry,
                    error_code=entry.error_code or error.code.value,
                    error_message=entry.error_message or error.detail,
                ),
                actor=actor,
                origin=origin,
                policy_version=self.policy.version,
                now=self.clock.now(),
            )
            session.commit()
            audit_id = row.id
        log.info(
            "action",
            actor=actor.id if actor else None,
            action=entry.action[:128],
            target=entry.target,
            result=entry.result.value,
            error_code=entry.error_code or error.code.value,
            audit_id=audit_id,
        )
        return audit_id

    def _refuse(
        self, error: OpsgateError, entry: AuditEntry, actor: Actor | None, origin: Origin
    ) -> NoReturn:
        self.audit_refusal(error, entry, actor, origin)
        raise error

    def _audit_crash(self, entry: AuditEntry, exc: Exception, actor: Actor, origin: Origin) -> None:
        # The exception text may carry data from the database; record only its type.
        crash = OpsgateError(f"internal error ({type(exc).__name__})")
        failed = replace(entry, result=AuditResult.FAILED)
        self.audit_refusal(crash, failed, actor, origin)
        log.exception("handler_crashed", action=entry.action, target=entry.target)
