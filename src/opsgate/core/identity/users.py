"""People: creating users and changing their roles (CLI and seed; later, governed actions)."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.ids import new_id
from opsgate.db.models import User, UserRole

_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")


def find_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def ensure_user(
    session: Session,
    username: str,
    display_name: str,
    roles: tuple[str, ...],
    *,
    now: datetime,
    service_account: bool = False,
) -> User:
    """Return the user named `username`, creating it with `roles` when it does not exist
    (a service account, a machine rather than a person, when asked)."""
    if not _USERNAME.fullmatch(username):
        raise ValueError("usernames are 2-64 characters of a-z, 0-9, '.', '_' or '-'")
    user = find_user(session, username)
    if user is None:
        user = User(
            id=new_id("usr"),
            username=username,
            display_name=display_name,
            is_active=True,
            is_service_account=service_account,
            created_at=now,
            roles=[UserRole(role=role, granted_at=now) for role in sorted(set(roles))],
        )
        session.add(user)
        session.flush()
    return user
