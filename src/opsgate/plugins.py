"""Finding, checking and registering plugins (the contract is `opsgate.plugin`).

Plugins come from the `opsgate.plugins` entry-point group. `OPSGATE_PLUGINS` chooses among
them: unset, every installed plugin is enabled; `none` (or empty), none; otherwise a comma-
separated list, each an entry-point name or a `module:attribute` path (`module` alone means
`module:plugin`). A plugin that fails to import or declares something invalid stops start-up
with a `PluginError` naming the plugin and the problem.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from opsgate.core.actions import admin_actions
from opsgate.core.actions.registry import Registry, RegistryError
from opsgate.core.integrations.config import (
    Backend,
    Integrations,
    IntegrationsError,
    load_integrations,
)
from opsgate.declarations import Declarations, DeclarationsError, load_declarations
from opsgate.plugin import Plugin

ENTRY_POINT_GROUP = "opsgate.plugins"
# The plugin that OPSGATE_DECLARATIONS's file becomes in a deployment without Python.
DECLARATIONS_PLUGIN = "declarations"
_PLUGIN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# opsgate's own top-level commands and API segments a plugin name must not shadow.
RESERVED_NAMES = frozenset(
    {"admin", "approvals", "audit", "db", "idempotency", "plugins", "policy", "reconcile",
     "serve", "tokens", "users", "webhooks", "new", "system", "records"}
)  # fmt: skip
BUILT_IN_POLICY = Path(__file__).parent / "policy.toml"


class PluginError(Exception):
    """A plugin could not be loaded, or what it declares is invalid."""

    def __init__(self, plugin: str, problem: str) -> None:
        super().__init__(f"plugin {plugin!r}: {problem}")
        self.plugin = plugin
        self.problem = problem


@dataclass(frozen=True)
class Enabled:
    """A loaded plugin and where it came from (an entry point, or the setting)."""

    plugin: Plugin
    source: str


def installed() -> list[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def discover(setting: str | None) -> list[Enabled]:
    """The enabled plugins, loaded and checked, in a stable order."""
    available = {ep.name: ep for ep in installed()}
    if setting is None:
        wanted = list(available)
    else:
        wanted = [part.strip() for part in setting.split(",") if part.strip()]
        if wanted == ["none"]:
            wanted = []
    loaded: list[Enabled] = []
    for name in wanted:
        if name in available:
            ep = available[name]
            loaded.append(Enabled(_load(name, ep.value, ep.load), f"entry point {ep.value}"))
        elif ":" in name or "." in name:
            loaded.append(Enabled(_load(name, name, lambda n=name: _import(n)), "OPSGATE_PLUGINS"))
        else:
            known = ", ".join(available) or "none installed"
            raise PluginError(name, f"no such plugin (installed: {known})")
    _check_unique(loaded)
    return loaded


def _import(path: str) -> object:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute or "plugin")


def _load(name: str, value: str, load: object) -> Plugin:
    try:
        found = load()  # type: ignore[operator]
    except Exception as exc:
        raise PluginError(name, f"failed to import {value}: {type(exc).__name__}: {exc}") from exc
    if callable(found) and not isinstance(found, Plugin):
        try:
            found = found()
        except Exception as exc:
            raise PluginError(name, f"{value}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(found, Plugin):
        raise PluginError(
            name, f"{value} is a {type(found).__name__}, not an opsgate.plugin.Plugin"
        )
    return found


def _check_unique(loaded: Sequence[Enabled]) -> None:
    seen: set[str] = set()
    for item in loaded:
        name = item.plugin.name
        if not name or set(name) - _PLUGIN_NAME_CHARS or not name[0].isalpha():
            raise PluginError(name, "its name must be lower case letters, digits, _ or -")
        if name in RESERVED_NAMES:
            raise PluginError(name, "that name is one of opsgate's own commands")
        if name in seen:
            raise PluginError(name, "two enabled plugins have this name")
        seen.add(name)


def build_registry(plugins: Iterable[Enabled]) -> Registry:
    """opsgate's own administration actions, then every plugin's target kinds and actions."""
    registry = Registry()
    admin_actions.register(registry)
    for item in plugins:
        plugin = item.plugin
        try:
            for kind in plugin.target_kinds:
                registry.add_target_kind(kind)
            for spec in plugin.actions:
                registry.add(spec)
        except RegistryError as exc:
            raise PluginError(plugin.name, str(exc)) from exc
    return registry


def default_file(plugins: Sequence[Enabled], attribute: str) -> Path | None:
    """The file (`policy` or `integrations`) to use when its setting is unset: the one the
    only plugin shipping one ships. Several plugins shipping one is an error: say which."""
    shipped = [(e.plugin.name, getattr(e.plugin, attribute)) for e in plugins]
    shipped = [(name, path) for name, path in shipped if path is not None]
    if len(shipped) > 1:
        names = ", ".join(name for name, _ in shipped)
        raise PluginError(
            names,
            f"several plugins ship a default {attribute} file: set OPSGATE_{attribute.upper()}",
        )
    return shipped[0][1] if shipped else None


@dataclass(frozen=True)
class Setup:
    """What a process runs with: its plugins, their registry, and the files chosen;
    `backends`, the services declarations bind (joined to the integrations file's)."""

    plugins: tuple[Enabled, ...]
    registry: Registry
    policy: Path
    integrations: Path | None
    backends: tuple[Backend, ...] = ()
    missing_secrets: tuple[str, ...] = ()

    def load_integrations(self, env: Mapping[str, str] | None = None) -> Integrations:
        """The integrations file's backends and webhooks plus the declared backends; raise
        IntegrationsError naming every problem (a declared backend's unset secret too)."""
        if self.missing_secrets:
            raise IntegrationsError("<declarations>", list(self.missing_secrets))
        return load_integrations(self.integrations, self.registry, env, self.backends)


def with_declarations(
    plugins: Sequence[Enabled], declarations: Path | None
) -> tuple[tuple[Enabled, ...], tuple[Backend, ...], tuple[str, ...]]:
    """Each plugin with its declarations file's contents added, as if listed in it, and the
    `declarations` setting's file as a plugin of its own; the services they bind, and the
    places of the secrets the environment lacks. A bad
    plugin file raises PluginError naming the plugin; a bad setting file, DeclarationsError."""
    enabled: list[Enabled] = []
    backends: list[Backend] = []
    missing: list[str] = []
    for item in plugins:
        if item.plugin.declarations is None:
            enabled.append(item)
            continue
        try:
            found = load_declarations(item.plugin.declarations)
        except DeclarationsError as exc:
            raise PluginError(item.plugin.name, str(exc)) from exc
        enabled.append(replace(item, plugin=_extended(item.plugin, found)))
        backends += found.backends
        missing += found.missing_secrets
    if declarations is not None:
        if any(e.plugin.name == DECLARATIONS_PLUGIN for e in enabled):
            raise PluginError(DECLARATIONS_PLUGIN, "the name is taken by OPSGATE_DECLARATIONS")
        found = load_declarations(declarations)
        plugin = _extended(Plugin(name=DECLARATIONS_PLUGIN), found)
        enabled.append(Enabled(plugin, f"OPSGATE_DECLARATIONS {declarations}"))
        backends += found.backends
        missing += found.missing_secrets
    return tuple(enabled), tuple(backends), tuple(missing)


def _extended(plugin: Plugin, found: Declarations) -> Plugin:
    return replace(
        plugin,
        target_kinds=(*plugin.target_kinds, *found.target_kinds),
        actions=(*plugin.actions, *found.actions),
        search=(*plugin.search, *found.search),
        views=(*plugin.views, *found.views),
    )


def load_setup(
    plugins_setting: str | None,
    policy: Path | None,
    integrations: Path | None,
    declarations: Path | None = None,
) -> Setup:
    """Discover the plugins (with their declarations and the `declarations` file), build the
    registry, and choose the policy and integrations files: the settings when set, else the
    only shipping plugin's, else (policy) opsgate's own."""
    enabled, backends, missing = with_declarations(discover(plugins_setting), declarations)
    registry = build_registry(enabled)
    chosen_policy = policy or default_file(enabled, "policy") or BUILT_IN_POLICY
    chosen_integrations = integrations or default_file(enabled, "integrations")
    return Setup(enabled, registry, chosen_policy, chosen_integrations, backends, missing)
