"""Search providers and record views for target kinds a team's service owns (the public
types of opsgate.plugin, backed by the signed reads of core/integrations/remote_targets.py):

    GET {backend url}/v1/search/{kind}?q=…&limit=…  200 {"items": [{"id", "label", "fields"}]}
    GET {backend url}/v1/targets/{kind}/{id}        200 {"state": {…}} / 404

Built by opsgate/declarations.py for each declared kind; a Python plugin may build them too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opsgate.core.audit.redaction import MASK
from opsgate.core.errors import TargetUnavailable
from opsgate.core.integrations.backends import BackendClient
from opsgate.core.integrations.config import Backend
from opsgate.core.integrations.remote_targets import ReadFailed, read_target, signed_get
from opsgate.core.request_ids import new_request_id
from opsgate.plugin import ReadContext, Record, RecordField, SearchHit, SearchResults

MAX_SEARCH_LIMIT = 100


@dataclass  # not frozen: SearchProvider's members are plain attributes
class RemoteSearch:
    """A SearchProvider (opsgate.plugin) backed by a service's `GET /v1/search/{kind}`.
    Fields named in `pii` are always masked: search results never carry personal data."""

    name: str
    kinds: Sequence[str]
    backend: Backend
    client: BackendClient
    pii: frozenset[str] = frozenset()

    def search(self, ctx: ReadContext, query: str, limit: int) -> SearchResults:
        """Ask each kind's service; raise TargetUnavailable when one gives no usable answer."""
        limit = max(1, min(limit, MAX_SEARCH_LIMIT))
        hits: list[SearchHit] = []
        for kind in self.kinds:
            try:
                status, body = signed_get(
                    self.client,
                    self.backend,
                    f"/v1/search/{kind}",
                    request_id=ctx.request_id or new_request_id(),
                    query={"q": query, "limit": str(limit)},
                )
            except ReadFailed as exc:
                raise TargetUnavailable(
                    f"The service {self.backend.name} could not search {kind} ({exc}).",
                    extra={"backend": self.backend.name},
                ) from exc
            items = (body or {}).get("items") if status == 200 else None
            if not isinstance(items, list):
                raise TargetUnavailable(
                    f"The service {self.backend.name} answered a search of {kind} outside "
                    f"the contract (HTTP {status}).",
                    extra={"backend": self.backend.name},
                )
            for item in items[:limit]:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    given = item.get("fields")
                    fields: dict[str, Any] = given if isinstance(given, dict) else {}
                    masked = {k: MASK if k in self.pii else v for k, v in fields.items()}
                    label = str(item.get("label") or item["id"])[:200]
                    hits.append(SearchHit(kind, item["id"][:64], label, masked))
        return SearchResults(tuple(hits[:limit]), term_kind="text")


@dataclass(frozen=True)
class RemoteRecordView:
    """A RecordView's `read` for a remote kind: the service's record, its fields labelled,
    `pii` fields masked unless the reader revealed them, `links` fields (field → kind) shown
    as links to those targets. Use `RecordView(kind, read=view.read)`."""

    kind: str
    backend: Backend
    client: BackendClient
    labels: Mapping[str, str]
    pii: frozenset[str] = frozenset()
    links: Mapping[str, str] = field(default_factory=dict)
    title_field: str | None = None

    def read(self, ctx: ReadContext, target_id: str) -> Record | None:
        """The record, or None when the service says there is none; raise
        TargetUnavailable when it cannot be believed or reached."""
        try:
            found = read_target(
                self.client,
                self.backend,
                self.kind,
                target_id,
                request_id=ctx.request_id or new_request_id(),
            )
        except ReadFailed as exc:
            raise TargetUnavailable(
                f"The service {self.backend.name} could not say what {self.kind}:{target_id} "
                f"is ({exc}).",
                extra={"backend": self.backend.name},
            ) from exc
        if found is None:
            return None
        state = found.state
        fields, related = [], {}
        for name, label in self.labels.items():
            if name not in state:
                continue
            value = state[name]
            pii = name in self.pii
            link = None
            if name in self.links and isinstance(value, str | int) and value != "":
                link = f"{self.links[name]}:{value}"
                related[link] = f"{label} {value}"
            shown = MASK if pii and not ctx.reveal_pii and value is not None else value
            fields.append(RecordField(name, label, shown, pii=pii, link=link))
        title_value = state.get(self.title_field) if self.title_field else None
        title = str(title_value) if title_value is not None else f"{self.kind} {target_id}"
        if self.title_field in self.pii and not ctx.reveal_pii:
            title = f"{self.kind} {target_id}"
        return Record(self.kind, target_id, title, tuple(fields), related)
