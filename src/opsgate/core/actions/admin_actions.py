"""Governed administration: changing who holds which role is an action like any other,
permissioned, approved by another admin, and audited.

Nobody raises their own privileges: a request to change one's own roles is refused here,
and the person a request concerns can never approve it (core/approvals/gate.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from opsgate.core.actions.registry import (
    ActionContext,
    ActionSpec,
    Change,
    Outcome,
    Payload,
    Registry,
    RiskClass,
    TargetKind,
)
from opsgate.core.errors import DomainError
from opsgate.db.models import User, UserRole


def _load_user(session: Session, ident: str, lock: bool) -> User | None:
    stmt = select(User).where(User.id == ident)
    return session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()


def user_state(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "is_active": user.is_active,
        "roles": sorted(user.role_names()),
        "version": user.version,
    }


USER_KIND = TargetKind(
    "user", _load_user, user_state, frozenset({"id", "username", "is_active", "roles", "version"})
)


class AssignRole(Payload):
    role: str = Field(min_length=1, max_length=64, description="A role defined by the policy")
    operation: Literal["grant", "revoke"] = Field(description="Grant or revoke the role")


def _check(ctx: ActionContext, user: User, payload: AssignRole) -> None:
    if user.id == ctx.actor.id:
        raise DomainError("own_roles", "Nobody changes their own roles; ask another admin.")
    if payload.role not in ctx.known_roles:
        raise DomainError("unknown_role", f"The policy defines no role {payload.role!r}.")
    held = payload.role in user.role_names()
    if payload.operation == "grant" and held:
        raise DomainError("role_already_held", f"{user.username} already holds {payload.role}.")
    if payload.operation == "revoke" and not held:
        raise DomainError("role_not_held", f"{user.username} does not hold {payload.role}.")


def preview_assign_role(ctx: ActionContext, user: User, payload: AssignRole) -> Change:
    _check(ctx, user, payload)
    before = user_state(user)
    roles = set(before["roles"])
    roles = roles | {payload.role} if payload.operation == "grant" else roles - {payload.role}
    return Change(before, before | {"roles": sorted(roles), "version": user.version + 1})


def assign_role(ctx: ActionContext, user: User, payload: AssignRole) -> Outcome:
    _check(ctx, user, payload)
    if payload.operation == "grant":
        user.roles.append(UserRole(role=payload.role, granted_at=ctx.now))
    else:
        user.roles = [r for r in user.roles if r.role != payload.role]
    _touch(user)
    return Outcome({"user_id": user.id, "roles": sorted(user.role_names())})


def _touch(user: User) -> None:
    # Role rows live in another table; mark the user row changed so that its version moves
    # and any approval taken against the old roles goes stale.
    flag_modified(user, "display_name")


ADMIN_ACTIONS = (
    ActionSpec(
        name="admin.assign_role",
        label="Grant or revoke a role",
        description="Change which roles an operator holds. Needs another admin's approval.",
        risk=RiskClass.WRITE,
        target_kind="user",
        payload_model=AssignRole,
        handler=assign_role,
        preview=preview_assign_role,
    ),
)


def register(registry: Registry) -> None:
    registry.add_target_kind(USER_KIND)
    for spec in ADMIN_ACTIONS:
        registry.add(spec)
