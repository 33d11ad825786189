"""The actions this service runs: the demo domain's handlers, and what each one changes.

Each action reuses its `ActionSpec` (payload model, handler) and its target kind from the
demo domain, so the service and an in-process opsgate run the very same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from opsgate.core.actions.registry import ActionSpec, TargetKind
from opsgate_demo.models import Account, Payment
from opsgate_demo.money import MONEY_ACTIONS
from opsgate_demo.targets import TARGET_KINDS

_KINDS = {kind.name: kind for kind in TARGET_KINDS}
_SPECS = {spec.name: spec for spec in MONEY_ACTIONS}


@dataclass(frozen=True)
class LedgerAction:
    """An action of this service. `changed(session, target)` lists the objects the handler
    changed that opsgate keeps a copy of, as (target kind, object) pairs: their new state
    goes into the answer's `state`."""

    spec: ActionSpec
    kind: TargetKind
    changed: Callable[[Session, Any], list[tuple[TargetKind, Any]]]


def _reversal_changed(session: Session, payment: Payment) -> list[tuple[TargetKind, Any]]:
    # The settlement account moved too, but system accounts are not targets opsgate shows.
    account = session.get(Account, payment.account_id)
    assert account is not None  # a foreign key
    return [(_KINDS["payment"], payment), (_KINDS["account"], account)]


def _adjustment_changed(_session: Session, account: Account) -> list[tuple[TargetKind, Any]]:
    return [(_KINDS["account"], account)]


def _action(
    name: str, changed: Callable[[Session, Any], list[tuple[TargetKind, Any]]]
) -> LedgerAction:
    spec = _SPECS[name]
    return LedgerAction(spec, _KINDS[spec.target_kind], changed)


ACTIONS: Mapping[str, LedgerAction] = {
    action.spec.name: action
    for action in (
        _action("payment.reverse", _reversal_changed),
        _action("account.adjust_balance", _adjustment_changed),
    )
}
