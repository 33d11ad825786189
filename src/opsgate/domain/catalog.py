"""The demo backend's contribution to the registry."""

from __future__ import annotations

from opsgate.core import admin_actions
from opsgate.core.registry import Registry
from opsgate.domain.actions import ACTIONS
from opsgate.domain.money import MONEY_ACTIONS
from opsgate.domain.targets import TARGET_KINDS


def register(registry: Registry) -> None:
    for kind in TARGET_KINDS:
        registry.add_target_kind(kind)
    for spec in (*ACTIONS, *MONEY_ACTIONS):
        registry.add(spec)


def build_registry() -> Registry:
    """The control layer's own actions (administration) plus the demo backend's."""
    registry = Registry()
    admin_actions.register(registry)
    register(registry)
    return registry
