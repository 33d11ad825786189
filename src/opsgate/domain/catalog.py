"""The demo backend's contribution to the registry."""

from __future__ import annotations

from opsgate.core.registry import Registry
from opsgate.domain.actions import ACTIONS
from opsgate.domain.targets import TARGET_KINDS


def register(registry: Registry) -> None:
    for kind in TARGET_KINDS:
        registry.add_target_kind(kind)
    for spec in ACTIONS:
        registry.add(spec)


def build_registry() -> Registry:
    registry = Registry()
    register(registry)
    return registry
