"""Registries as a process builds them: opsgate's administration actions plus the demo plugin."""

from __future__ import annotations

from opsgate.core.actions.registry import Registry
from opsgate.plugins import Enabled
from opsgate.plugins import build_registry as _build
from opsgate_demo.plugin import plugin


def build_registry() -> Registry:
    return _build([Enabled(plugin(), "tests")])
