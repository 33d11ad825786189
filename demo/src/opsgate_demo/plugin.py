"""The demo backend as an opsgate plugin: found through the `opsgate.plugins` entry point
(demo/pyproject.toml), exactly as a team's plugin is."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from opsgate.plugin import Plugin, Registry
from opsgate_demo.actions import ACTIONS
from opsgate_demo.money import MONEY_ACTIONS
from opsgate_demo.targets import TARGET_KINDS
from opsgate_demo.views import SEARCH, SEARCH_HINT, VIEWS

HERE = Path(__file__).parent
DEMO_POLICY = HERE / "policy.toml"


def _version() -> str:
    try:
        return version("opsgate-demo")
    except PackageNotFoundError:  # run from a source tree without installing
        return "0+source"


def plugin() -> Plugin:
    """Built on first use: the CLI commands and the bench router import only when enabled."""
    from opsgate_demo.bench import router as bench_router
    from opsgate_demo.cli import demo_app
    from opsgate_demo.models import metadata

    return Plugin(
        name="demo",
        version=_version(),
        target_kinds=TARGET_KINDS,
        actions=(*ACTIONS, *MONEY_ACTIONS),
        search=SEARCH,
        search_hint=SEARCH_HINT,
        views=VIEWS,
        metadata=metadata,
        migrations=HERE / "migrations",
        policy=DEMO_POLICY,
        templates=HERE / "templates",
        cli=demo_app,
        bench_router=bench_router,
    )


def register(registry: Registry) -> None:
    """Add the demo's target kinds and actions to `registry` (tests build registries so)."""
    for kind in TARGET_KINDS:
        registry.add_target_kind(kind)
    for spec in (*ACTIONS, *MONEY_ACTIONS):
        registry.add(spec)
