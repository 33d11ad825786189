"""The body of an action call, as docs/backends.md defines it (opsgate's request)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from opsgate.core.canonical import digest

_Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
_RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_Id = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class CallActor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: _Id
    name: _Text
    roles: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]]


class ActionCall(BaseModel):
    """What opsgate sends. The payload is checked later, by the action's own model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    target: Annotated[str, StringConstraints(min_length=3, max_length=128)]
    payload: dict[str, Any]
    reason: Annotated[str, StringConstraints(max_length=2000)]
    actor: CallActor
    request_id: _RequestId
    approval_id: _Id | None = None
    execution_request_id: _RequestId | None = None

    @property
    def effect_request_id(self) -> str:
        """The request ID the effect is recorded under: an approved request's execution has
        its own (as in-process, where it names the ledger reference)."""
        return self.execution_request_id or self.request_id

    def fingerprint(self) -> str:
        """What makes a retry "the same action" under one key: the action, target, payload,
        reason, actor and approval. Not the request IDs or the actor's name and roles, which
        may differ between attempts of one action (a caller's retry gets a new request ID)."""
        return digest(
            {
                "action": self.action,
                "target": self.target,
                "payload": self.payload,
                "reason": self.reason,
                "actor_id": self.actor.id,
                "approval_id": self.approval_id,
            }
        )
