"""The action registry: what an engineer declares to add a capability.

An action is a plain handler `(ctx, target, payload) -> Outcome` plus its metadata. Target
kinds say how to load a target by ID and which of its state is worth recording.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from opsgate.core.identity.actors import Actor

_ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_TARGET_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


class RiskClass(StrEnum):
    READ = "read"
    WRITE = "write"
    MONEY_MOVING = "money_moving"


class Payload(BaseModel):
    """Base for action payload models: unknown fields are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


@dataclass(frozen=True)
class TargetRef:
    """A `kind:id` target string, parsed."""

    kind: str
    id: str

    @classmethod
    def parse(cls, value: str) -> TargetRef:
        """Parse `kind:id`; raise ValueError when the string has another shape."""
        kind, sep, ident = value.partition(":")
        if not sep or not _TARGET_KIND.fullmatch(kind) or not ident or len(ident) > 64:
            raise ValueError("target must look like 'kind:id', e.g. 'account:acc_01J...'")
        return cls(kind, ident)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class ActionContext:
    """What a handler may know about the call it serves. Handlers never read the clock or
    the request directly; everything comes from here."""

    session: Session
    actor: Actor
    action: str
    request_id: str
    reason: str
    now: datetime
    # Set when this run executes an approved request.
    approval_id: str | None = None
    # The roles the current policy defines (for actions that manage roles).
    known_roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Outcome:
    """What a handler returns: a JSON-serialisable result shown to the caller and, unless
    `audit` says otherwise (e.g. for revealed PII), recorded in the audit trail."""

    result: Mapping[str, Any] = field(default_factory=dict)
    audit: Mapping[str, Any] | None = None

    @property
    def audited(self) -> Mapping[str, Any]:
        return self.result if self.audit is None else self.audit


@dataclass(frozen=True)
class Change:
    """A proposed change, as a reviewer sees it: the target's relevant state before and after.

    Returned by an action's `preview`, which must not change anything.
    """

    before: Mapping[str, Any]
    after: Mapping[str, Any]


Handler = Callable[[ActionContext, Any, Any], Outcome]
Preview = Callable[[ActionContext, Any, Any], Change]


@dataclass(frozen=True)
class TargetKind:
    """How the control layer finds a target and records its relevant state.

    `load(session, id, lock)` returns the object or None; with `lock` it must take a row lock
    (SELECT ... FOR UPDATE) so that the state checked is the state changed. `snapshot` returns
    JSON-serialisable state, used for the before/after of the audit record.
    """

    name: str
    load: Callable[[Session, str, bool], object | None]
    snapshot: Callable[[Any], dict[str, Any]]
    # The keys `snapshot` returns; policy conditions on `target.<field>` are checked against
    # them at start-up. `version` must be among them: it is how staleness is detected.
    fields: frozenset[str] = frozenset()
    # For targets a remote backend owns: copy the state it reports after a change into the
    # local read model, `mirror(session, id, state)` (core/integrations/remote.py). None: nothing
    # kept.
    mirror: Callable[[Session, str, Mapping[str, Any]], None] | None = None
    # `customer_of(session, obj)`: the `customer:<id>` target the object belongs to (None when
    # it has none), so that policy can add up amounts per customer (`cumulative.customer.*`).
    customer_of: Callable[[Session, Any], str | None] | None = None
    # For targets a team's service owns and opsgate keeps no copy of: the name of that
    # service's backend. The gateway and controlled execution read the record from it with a
    # signed GET before opening their write transaction (core/integrations/remote_targets.py)
    # and hand the state in; `load` is then never called inside a transaction.
    remote: str | None = None


@dataclass(frozen=True)
class ActionSpec:
    """An action as an engineer declares it (see docs/adding-an-action.md)."""

    name: str
    label: str
    description: str
    risk: RiskClass
    target_kind: str
    payload_model: type[Payload]
    handler: Handler
    # Side-effect-free: what `handler` would change. Required for actions under approval.
    preview: Preview | None = None

    def payload_schema(self) -> dict[str, Any]:
        return self.payload_model.model_json_schema()


class RegistryError(Exception):
    """A declaration is malformed or conflicts with another one."""


class Registry:
    """All target kinds and actions known to this process. Built once at start-up."""

    def __init__(self) -> None:
        self._actions: dict[str, ActionSpec] = {}
        self._kinds: dict[str, TargetKind] = {}

    def add_target_kind(self, kind: TargetKind) -> None:
        """Register a target kind; raise RegistryError on a bad or duplicate name."""
        if not _TARGET_KIND.fullmatch(kind.name):
            raise RegistryError(f"target kind {kind.name!r} must be lower snake case")
        if kind.name in self._kinds:
            raise RegistryError(f"target kind {kind.name!r} is registered twice")
        if "version" not in kind.fields:
            raise RegistryError(f"target kind {kind.name!r} must declare a 'version' field")
        self._kinds[kind.name] = kind

    def add(self, spec: ActionSpec) -> None:
        """Register an action; raise RegistryError when it breaks a registry rule."""
        if not _ACTION_NAME.fullmatch(spec.name):
            raise RegistryError(f"action {spec.name!r} must be named noun.verb in snake case")
        if spec.name in self._actions:
            raise RegistryError(f"action {spec.name!r} is registered twice")
        if spec.target_kind not in self._kinds:
            raise RegistryError(
                f"action {spec.name!r} names unknown target kind {spec.target_kind!r}"
            )
        if spec.payload_model.model_config.get("extra") != "forbid":
            raise RegistryError(f"action {spec.name!r}: payload model must forbid extra fields")
        self._actions[spec.name] = spec

    def get(self, name: str) -> ActionSpec | None:
        return self._actions.get(name)

    def target_kind(self, name: str) -> TargetKind | None:
        return self._kinds.get(name)

    def target_kinds(self) -> list[TargetKind]:
        return [self._kinds[name] for name in sorted(self._kinds)]

    def names(self) -> list[str]:
        return sorted(self._actions)

    def specs(self) -> list[ActionSpec]:
        return [self._actions[name] for name in self.names()]
