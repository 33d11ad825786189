"""Single sign-on people: who an identity provider says someone is, and the opsgate user
that (issuer, subject) stands for.

The provider is trusted for identity and group membership only; the policy's
`[identity_provider] group_roles` decides which opsgate roles those groups give. Roles are
set from the groups at every sign-in; a change is audited as a role change
(`user.set_roles`, before and after, `source: oidc`) and moves the user's version like an
admin's role change, so a pending request about them goes stale; a person
whose groups give no role is refused (`auth.login`, denied). A new person becomes a new
user; a username already held by another opsgate account is never taken over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from opsgate.core.actions.policy import Policy
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.identity.actors import Origin
from opsgate.core.identity.console_sessions import AuthAction, SignInMethod
from opsgate.core.identity.users import find_user
from opsgate.core.ids import new_id
from opsgate.db.models import User, UserIdentity, UserRole

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")


@dataclass(frozen=True)
class SsoIdentity:
    """The claims of a validated ID token that opsgate uses."""

    issuer: str
    subject: str
    username: str | None
    display_name: str | None
    groups: tuple[str, ...]


class SsoRefused(Exception):
    """The person may not sign in; `reason` is the audit error code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


NO_ROLE = "Your groups give you no role in opsgate. Ask an admin if you need access."


def audit_refusal(
    session: Session,
    reason: str,
    message: str,
    *,
    identity: SsoIdentity | None,
    origin: Origin,
    now: datetime,
    policy_version: str | None,
) -> None:
    """Audit a refused single sign-on (`auth.login`, denied); not committed."""
    parameters: dict[str, object] = {"method": SignInMethod.OIDC.value}
    if identity is not None:
        parameters |= {
            "issuer": identity.issuer,
            "subject": identity.subject,
            "groups": sorted(identity.groups)[:50],
        }
    record(
        session,
        AuditEntry(
            action=AuthAction.LOGIN,
            result=AuditResult.DENIED,
            error_code=reason,
            error_message=message,
            parameters=parameters,
        ),
        actor=None,
        origin=origin,
        policy_version=policy_version,
        now=now,
    )


def _username(identity: SsoIdentity) -> str | None:
    candidate = (identity.username or "").strip().lower()
    return candidate if _USERNAME.fullmatch(candidate) else None


def provision(
    session: Session,
    identity: SsoIdentity,
    policy: Policy,
    *,
    origin: Origin,
    now: datetime,
) -> User:
    """The user `identity` stands for, created or updated, with the roles its groups give;
    raise SsoRefused (the caller audits it). Not committed."""
    roles = policy.roles_for_groups(identity.groups)
    if not roles:
        raise SsoRefused("no_role", NO_ROLE)
    link = session.scalars(
        select(UserIdentity).where(
            UserIdentity.issuer == identity.issuer, UserIdentity.subject == identity.subject
        )
    ).one_or_none()
    if link is None:
        username = _username(identity)
        if username is None:
            raise SsoRefused(
                "no_username",
                "Your identity provider did not give a usable username "
                "(preferred_username or email); ask an admin.",
            )
        if find_user(session, username) is not None:
            raise SsoRefused(
                "username_taken",
                f"The opsgate username {username!r} belongs to another account, so single "
                "sign-on cannot use it; ask an admin.",
            )
        user = User(
            id=new_id("usr"),
            username=username,
            display_name=(identity.display_name or username)[:200],
            is_active=True,
            created_at=now,
            roles=[],
        )
        session.add(user)
        link = UserIdentity(
            id=new_id("idn"),
            issuer=identity.issuer,
            subject=identity.subject,
            user_id=user.id,
            created_at=now,
            last_sign_in_at=now,
        )
        session.add(link)
        session.flush()
        _audit_user(session, "user.create", user, origin, now, policy.version, {"sso": True})
    else:
        found = session.get(User, link.user_id)
        assert found is not None
        user = found
        if not user.is_active:
            raise SsoRefused("inactive", "Your account is deactivated; ask an admin.")
        link.last_sign_in_at = now
        if identity.display_name and identity.display_name[:200] != user.display_name:
            user.display_name = identity.display_name[:200]
    before = user.role_names()
    if before != roles:
        user.roles = [role for role in user.roles if role.role in roles] + [
            UserRole(role=name, granted_at=now) for name in sorted(roles - before)
        ]
        # Role rows live in another table; mark the user row changed so that its version
        # moves, as an admin's role change does, and a pending request about this person
        # (an `admin.assign_role` approved against the old roles) goes stale.
        flag_modified(user, "display_name")
        session.flush()
        _audit_user(
            session,
            "user.set_roles",
            user,
            origin,
            now,
            policy.version,
            {"source": "oidc", "groups": sorted(identity.groups)[:50]},
            before=sorted(before),
            after=sorted(roles),
        )
    return user


def _audit_user(
    session: Session,
    action: str,
    user: User,
    origin: Origin,
    now: datetime,
    policy_version: str | None,
    parameters: dict[str, object],
    *,
    before: list[str] | None = None,
    after: list[str] | None = None,
) -> None:
    record(
        session,
        AuditEntry(
            action=action,
            result=AuditResult.SUCCEEDED,
            target=f"user:{user.id}",
            parameters=parameters,
            before={"roles": before} if before is not None else None,
            after={"roles": after} if after is not None else None,
        ),
        actor=None,  # done by the identity provider's word, at sign-in
        origin=origin,
        policy_version=policy_version,
        now=now,
    )
