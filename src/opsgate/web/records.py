"""The search providers and record views the enabled plugins contribute, checked once at
start-up, and the one place a Record becomes what the API and the console show.

opsgate knows no kind of record of its own here: every customer, account or payment the
console shows comes from a plugin through `opsgate.plugin` (SearchProvider, RecordView).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from opsgate.core.actions.registry import Registry, RiskClass, TargetRef
from opsgate.plugin import Record, RecordView, SearchProvider
from opsgate.plugins import Enabled, PluginError

# URL names opsgate uses itself under /console and /api/v1, and the keys of a search answer.
RESERVED = frozenset(
    {
        "actions",
        "approvals",
        "audit",
        "controls",
        "health",
        "hits",
        "login",
        "logout",
        "metrics",
        "query",
        "records",
        "request_id",
        "search",
        "sign-in",
        "static",
        "step-up",
        "tokens",
        "total",
        "trace",
    }
)


@dataclass(frozen=True)
class Catalogue:
    """Who searches what and how each kind is shown; `owner` names the plugin of a view."""

    providers: tuple[SearchProvider, ...] = ()
    views: Mapping[str, RecordView] = field(default_factory=dict)
    owner: Mapping[str, str] = field(default_factory=dict)
    hints: tuple[str, ...] = ()

    def view(self, kind: str) -> RecordView | None:
        return self.views.get(kind)

    def by_collection(self, collection: str) -> RecordView | None:
        return next((v for v in self.views.values() if v.collection == collection), None)

    def collection(self, kind: str) -> str:
        """The name a search answer groups `kind` under: the view's collection, else the kind."""
        view = self.views.get(kind)
        return view.collection if view is not None and view.collection else kind

    def searched_kinds(self) -> list[str]:
        kinds: list[str] = []
        for provider in self.providers:
            kinds.extend(k for k in provider.kinds if k not in kinds)
        return kinds

    def search_label(self) -> str:
        """What the search box is for: `Find a customer, account or payment`."""
        kinds = [kind.replace("_", " ") for kind in self.searched_kinds()]
        if not kinds:
            return "Find a record"
        listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
        return f"Find a {listed}"

    def page(self, kind: str, ident: str) -> str | None:
        """The console page of a record (None: no view for its kind)."""
        view = self.views.get(kind)
        if view is None:
            return None
        # A plugin's IDs may hold any character: a path segment of its own.
        if view.collection:
            return f"/console/{view.collection}/{quote(ident, safe='')}"
        return f"/console/records/{kind}/{quote(ident, safe='')}"

    def template(self, kind: str) -> str:
        view = self.views[kind]
        if view.template is None:
            return "record.html"
        return f"{self.owner[kind]}/{view.template}"


def catalogue(enabled: Sequence[Enabled], registry: Registry) -> Catalogue:
    """Collect the plugins' providers and views; raise PluginError naming the plugin when a
    view clashes with another, names a reserved collection, or reveals through an action
    that is not a read action on its kind."""
    providers: list[SearchProvider] = []
    hints: list[str] = []
    views: dict[str, RecordView] = {}
    owner: dict[str, str] = {}
    collections: dict[str, str] = {}
    for item in enabled:
        name = item.plugin.name
        providers.extend(item.plugin.search)
        if item.plugin.search and item.plugin.search_hint:
            hints.append(item.plugin.search_hint)
        for view in item.plugin.views:
            if view.kind in views:
                raise PluginError(name, f"a second record view of kind {view.kind!r}")
            if registry.target_kind(view.kind) is None:
                raise PluginError(name, f"record view of unknown target kind {view.kind!r}")
            if view.collection is not None:
                if view.collection in RESERVED or not view.collection.replace("_", "").isalnum():
                    raise PluginError(name, f"collection {view.collection!r} cannot be used")
                if view.collection in collections:
                    raise PluginError(name, f"collection {view.collection!r} is taken")
                collections[view.collection] = view.kind
            if view.template is not None and item.plugin.templates is None:
                raise PluginError(name, f"view of {view.kind!r} has a template, no templates")
            if view.reveal is not None:
                spec = registry.get(view.reveal)
                if spec is None or spec.target_kind != view.kind or spec.risk != RiskClass.READ:
                    raise PluginError(
                        name, f"{view.reveal!r} is not a read action on {view.kind!r}"
                    )
            views[view.kind] = view
            owner[view.kind] = name
    return Catalogue(tuple(providers), views, owner, tuple(hints))


def record_answer(record: Record, pages: Catalogue) -> dict[str, Any]:
    """A Record as JSON: labelled fields (pii flagged; masked by the view unless revealed),
    related targets with their console pages, and tables."""
    return {
        "kind": record.kind,
        "id": record.id,
        "target": f"{record.kind}:{record.id}",
        "title": record.title,
        "fields": [
            {
                "name": f.name,
                "label": f.label,
                "value": f.value,
                "pii": f.pii,
                "link": f.link,
            }
            for f in record.fields
        ],
        "related": [
            {"target": target, "label": label, "page": page_of(pages, target)}
            for target, label in record.related.items()
        ],
        "sections": {title: [dict(row) for row in rows] for title, rows in record.sections.items()},
    }


def page_of(pages: Catalogue, target: str) -> str | None:
    try:
        ref = TargetRef.parse(target)
    except ValueError:
        return None
    return pages.page(ref.kind, ref.id)
