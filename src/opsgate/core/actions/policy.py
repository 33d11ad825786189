"""Policy as code: one TOML file says who may do what. Deny is the default.

The file is validated against the action registry at start-up; any mistake stops the
process with a message naming its place. The policy's version is the SHA-256 of its
canonical form (keys sorted, role lists sorted), so reformatting or reordering the file does
not change it, while any change of meaning does.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsgate.core.actions.conditions import (
    CUMULATIVE,
    Aggregate,
    Condition,
    Facts,
    Measure,
    Scope,
    all_hold,
)
from opsgate.core.actions.registry import ActionSpec, Registry, TargetKind
from opsgate.core.canonical import digest
from opsgate.core.durations import parse_duration

_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_AMOUNT_FIELD = "amount_minor"


class Capability(StrEnum):
    """Things a role may do that are not actions on a target."""

    AUDIT_READ = "audit.read"
    METRICS_READ = "metrics.read"
    RECORDS_SEARCH = "records.search"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _sorted_unique(values: list[str]) -> list[str]:
    return sorted(set(values))


class RoleEntry(_Strict):
    description: str = Field(min_length=1)


class ControlMode(StrEnum):
    """How a control applies: `monitor` executes but records what it would have done."""

    OFF = "off"
    MONITOR = "monitor"
    ENFORCE = "enforce"


class ApprovalTier(_Strict):
    """When every `when` condition holds (an empty list always does), `quorum` approvals."""

    when: list[Condition] = Field(default_factory=list)
    quorum: int = Field(ge=1, le=10)


class ApprovalRule(_Strict):
    """Who must approve an action before it runs. Tiers are tried in order; the first that
    matches decides the quorum; when none matches, no approval is needed."""

    mode: ControlMode = ControlMode.ENFORCE
    approver_roles: list[str] = Field(min_length=1)
    expires_in: str = "24h"
    tiers: list[ApprovalTier] = Field(min_length=1)

    _normalise = field_validator("approver_roles")(_sorted_unique)

    @field_validator("expires_in")
    @classmethod
    def _valid_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def expiry(self) -> timedelta:
        return parse_duration(self.expires_in)


class LimitRule(_Strict):
    """At most `max_count` uses, or `max_amount_minor` summed (by magnitude) over the
    payload's `amount_field`, per actor within a rolling `window`."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    window: str
    max_count: int | None = Field(default=None, ge=1)
    max_amount_minor: int | None = Field(default=None, ge=1)
    amount_field: str = DEFAULT_AMOUNT_FIELD
    mode: ControlMode = ControlMode.ENFORCE

    @field_validator("window")
    @classmethod
    def _valid_window(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _one_measure(self) -> LimitRule:
        if (self.max_count is None) == (self.max_amount_minor is None):
            raise ValueError("set exactly one of max_count and max_amount_minor")
        return self

    @property
    def period(self) -> timedelta:
        return parse_duration(self.window)

    def describe(self) -> dict[str, Any]:
        return {
            "limit": self.name,
            "mode": self.mode.value,
            "window": self.window,
            "max_count": self.max_count,
            "max_amount_minor": self.max_amount_minor,
        }


class ActionEntry(_Strict):
    """Policy for one action: who may start it and which controls apply."""

    allow: list[str] = Field(description="roles that may start the action")
    approval: ApprovalRule | None = None
    limits: list[LimitRule] = Field(default_factory=list)

    _normalise = field_validator("allow")(_sorted_unique)


@dataclass(frozen=True)
class ApprovalRequirement:
    """An approval rule that applies to one particular request."""

    action: str
    mode: ControlMode
    quorum: int
    approver_roles: tuple[str, ...]
    expires_in: timedelta
    tier: int
    conditions: tuple[str, ...]
    # Each condition of the tier as it held for this request, with its figure (e.g.
    # "cumulative 258.71 USD on this payment in 24h > 100.00 USD"): why it is held.
    because: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "action": self.action,
            "mode": self.mode.value,
            "quorum": self.quorum,
            "approver_roles": list(self.approver_roles),
            "expires_in_seconds": int(self.expires_in.total_seconds()),
            "tier": self.tier,
            "when": list(self.conditions),
        }
        if self.because:
            described["because"] = list(self.because)
        return described


class CapabilityEntry(_Strict):
    allow: list[str]

    _normalise = field_validator("allow")(_sorted_unique)


class IdentityProviderEntry(_Strict):
    """Single sign-on: which opsgate roles each identity provider group gives."""

    group_roles: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("group_roles")
    @classmethod
    def _normalise_roles(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {group: _sorted_unique(roles) for group, roles in value.items()}


class PolicyDocument(_Strict):
    roles: dict[str, RoleEntry]
    actions: dict[str, ActionEntry]
    capabilities: dict[str, CapabilityEntry]
    identity_provider: IdentityProviderEntry | None = None


class PolicyError(Exception):
    """The policy file cannot be used. `problems` lists each mistake with its place."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"policy {source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Policy:
    """A validated policy. Ask it; never read `document` to make a decision elsewhere."""

    document: PolicyDocument
    version: str
    source: str

    def may_start(self, roles: frozenset[str], action: str) -> bool:
        """True when any of `roles` is allowed to start `action`; False for unknown actions."""
        entry = self.document.actions.get(action)
        return entry is not None and not roles.isdisjoint(entry.allow)

    def has(self, roles: frozenset[str], capability: Capability) -> bool:
        """True when any of `roles` holds `capability`."""
        entry = self.document.capabilities.get(capability)
        return entry is not None and not roles.isdisjoint(entry.allow)

    def roles(self) -> list[str]:
        return sorted(self.document.roles)

    def roles_for_groups(self, groups: Iterable[str]) -> frozenset[str]:
        """The roles the identity provider groups `groups` give (`[identity_provider]`);
        empty when none is mapped."""
        entry = self.document.identity_provider
        if entry is None:
            return frozenset()
        return frozenset(role for group in groups for role in entry.group_roles.get(group, ()))

    def approval_for(self, action: str, facts: Facts) -> ApprovalRequirement | None:
        """The approval this request needs under the action's rule, or None (no rule, mode
        `off`, or no tier matches). `facts.cumulative` must hold every figure
        `aggregates_for(action)` names (a missing one counts as reached: fail closed). The
        caller decides what `monitor` means."""
        rule = self._approval_rule(action)
        if rule is None or rule.mode == ControlMode.OFF:
            return None
        for index, tier in enumerate(rule.tiers):
            if all_hold(tier.when, facts):
                return ApprovalRequirement(
                    action=action,
                    mode=rule.mode,
                    quorum=tier.quorum,
                    approver_roles=tuple(rule.approver_roles),
                    expires_in=rule.expiry,
                    tier=index,
                    conditions=tuple(c.describe() for c in tier.when),
                    because=tuple(c.explain(facts) for c in tier.when),
                )
        return None

    def aggregates_for(self, action: str) -> list[Aggregate]:
        """The cumulative figures the action's approval rule (unless `off`) is judged on."""
        rule = self._approval_rule(action)
        if rule is None or rule.mode == ControlMode.OFF:
            return []
        found = {c.aggregate for tier in rule.tiers for c in tier.when}
        return sorted(a for a in found if a is not None)

    def amount_field(self, action: str) -> str:
        """The payload field whose magnitude limits and cumulative amounts add up."""
        limits = self.limits_for(action)
        return limits[0].amount_field if limits else DEFAULT_AMOUNT_FIELD

    def counts_uses(self, action: str) -> bool:
        """True when limits or cumulative conditions need the action's uses recorded."""
        return bool(self.limits_for(action) or self.aggregates_for(action))

    def _approval_rule(self, action: str) -> ApprovalRule | None:
        entry = self.document.actions.get(action)
        return entry.approval if entry else None

    def limits_for(self, action: str) -> list[LimitRule]:
        entry = self.document.actions.get(action)
        return list(entry.limits) if entry else []

    def may_approve(self, roles: frozenset[str], action: str) -> bool:
        """True when any of `roles` is an approver role of `action`'s approval rule."""
        entry = self.document.actions.get(action)
        rule = entry.approval if entry else None
        return rule is not None and not roles.isdisjoint(rule.approver_roles)

    def allowed_roles(self, action: str) -> list[str]:
        entry = self.document.actions.get(action)
        return list(entry.allow) if entry else []


def _place(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_policy(text: str, registry: Registry, *, source: str = "<policy>") -> Policy:
    """Validate policy text against `registry`; raise PolicyError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, [f"not valid TOML: {exc}"]) from exc
    try:
        document = PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{_place(error['loc'])}: {message}")
        # Report the cross-references too, as far as the raw file allows, so that one run
        # names every mistake.
        problems += [p for p in _raw_cross_check(raw, registry) if p not in problems]
        raise PolicyError(source, problems) from exc

    problems = _cross_check(document, registry)
    if problems:
        raise PolicyError(source, problems)
    canonical = document.model_dump(mode="json")
    if canonical.get("identity_provider") is None:
        # A policy without the section keeps the version it had before the section existed.
        canonical.pop("identity_provider", None)
    version = digest(canonical)
    return Policy(document=document, version=version, source=source)


def load_policy(path: Path, registry: Registry) -> Policy:
    """Read and validate the policy file at `path`; raise PolicyError on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), [f"cannot read: not UTF-8 ({exc.reason})"]) from exc
    return parse_policy(text, registry, source=str(path))


def _cross_check(document: PolicyDocument, registry: Registry) -> list[str]:
    problems = []
    roles = set(document.roles)
    for role in sorted(roles):
        if not _ROLE_NAME.fullmatch(role):
            problems.append(f"roles.{role}: role names are lower snake case")
    for name, action_entry in sorted(document.actions.items()):
        if registry.get(name) is None:
            problems.append(f"actions.{name}: no such action is registered")
        problems += _unknown_roles(f"actions.{name}.allow", action_entry.allow, roles)
        if action_entry.approval is not None:
            problems += _check_approval(
                name, action_entry.approval, registry, roles, action_entry.limits
            )
        problems += _check_limits(name, action_entry.limits, registry)
    for name in registry.names():
        if name not in document.actions:
            problems.append(f"actions.{name}: registered action has no policy entry")
    known_capabilities = {c.value for c in Capability}
    for name, cap_entry in sorted(document.capabilities.items()):
        if name not in known_capabilities:
            problems.append(f"capabilities.{name}: no such capability")
        problems += _unknown_roles(f"capabilities.{name}.allow", cap_entry.allow, roles)
    for name in sorted(known_capabilities - set(document.capabilities)):
        problems.append(f"capabilities.{name}: capability has no policy entry")
    if document.identity_provider is not None:
        for group, group_roles in sorted(document.identity_provider.group_roles.items()):
            problems += _unknown_roles(f"identity_provider.group_roles.{group}", group_roles, roles)
    return problems


def _raw_cross_check(raw: dict[str, Any], registry: Registry) -> list[str]:
    """Role and action references of a file that did not validate as a whole."""
    roles_raw = raw.get("roles")
    actions_raw = raw.get("actions")
    if not isinstance(roles_raw, dict) or not isinstance(actions_raw, dict):
        return []
    roles = set(roles_raw)
    problems = []
    for name, entry in sorted(actions_raw.items()):
        if registry.get(name) is None:
            problems.append(f"actions.{name}: no such action is registered")
        allow = entry.get("allow") if isinstance(entry, dict) else None
        if isinstance(allow, list):
            problems += _unknown_roles(f"actions.{name}.allow", [str(a) for a in allow], roles)
    for name in registry.names():
        if name not in actions_raw:
            problems.append(f"actions.{name}: registered action has no policy entry")
    return problems


def _check_approval(
    name: str,
    rule: ApprovalRule,
    registry: Registry,
    roles: set[str],
    limits: list[LimitRule],
) -> list[str]:
    place = f"actions.{name}.approval"
    problems = _unknown_roles(f"{place}.approver_roles", rule.approver_roles, roles)
    spec = registry.get(name)
    if spec is None:
        return problems
    if spec.preview is None:
        problems.append(f"{place}: {name} has no preview, so reviewers could not see the change")
    kind = registry.target_kind(spec.target_kind)
    target_fields = kind.fields if kind else frozenset()
    payload_fields = set(spec.payload_model.model_fields)
    amount_field = limits[0].amount_field if limits else DEFAULT_AMOUNT_FIELD
    for t, tier in enumerate(rule.tiers):
        for c, condition in enumerate(tier.when):
            where = f"{place}.tiers.{t}.when.{c}"
            aggregate = condition.aggregate
            if aggregate is not None:
                problems += _check_aggregate(where, name, aggregate, amount_field, spec, kind)
                continue
            if condition.source == CUMULATIVE:
                continue  # already refused by the model (no window)
            known = payload_fields if condition.source == "payload" else target_fields
            if condition.name not in known:
                problems.append(
                    f"{where}: {name} has no {condition.source} field {condition.name!r}"
                )
    return problems


def _check_aggregate(
    where: str,
    name: str,
    aggregate: Aggregate,
    amount_field: str,
    spec: ActionSpec,
    kind: TargetKind | None,
) -> list[str]:
    problems = []
    if aggregate.measure == Measure.AMOUNT and amount_field not in spec.payload_model.model_fields:
        problems.append(
            f"{where}: cumulative amounts add up the payload field {amount_field!r}, "
            f"which {name} does not have"
        )
    if aggregate.scope == Scope.CUSTOMER and (kind is None or kind.customer_of is None):
        problems.append(
            f"{where}: {spec.target_kind} targets do not say which customer they belong to, "
            "so cumulative.customer cannot be computed for them"
        )
    return problems


def _check_limits(name: str, limits: list[LimitRule], registry: Registry) -> list[str]:
    problems = []
    spec = registry.get(name)
    names = [rule.name for rule in limits]
    if len(set(names)) != len(names):
        problems.append(f"actions.{name}.limits: limit names must be unique")
    for n, rule in enumerate(limits):
        if (
            spec is not None
            and rule.max_amount_minor is not None
            and rule.amount_field not in spec.payload_model.model_fields
        ):
            problems.append(
                f"actions.{name}.limits.{n}.amount_field: {name} has no payload field "
                f"{rule.amount_field!r}"
            )
    fields = {rule.amount_field for rule in limits}
    if len(fields) > 1:
        problems.append(f"actions.{name}.limits: all limits of an action sum one amount_field")
    return problems


def _unknown_roles(place: str, names: list[str], roles: set[str]) -> list[str]:
    return [f"{place}: unknown role {name!r}" for name in names if name not in roles]
