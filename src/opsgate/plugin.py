"""The public plugin API: everything a team imports to put its own capabilities behind opsgate.

A plugin is a `Plugin` value found through the `opsgate.plugins` entry-point group (or named in
`OPSGATE_PLUGINS`). It contributes target kinds, actions, search providers, record views, its
own tables and migrations, and CLI commands. Nothing else of opsgate's internals is part of the
contract: a plugin imports from this module (and, in its tests, `opsgate.testing`) only. See
docs/adopting.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opsgate.core.actions.registry import (
    ActionContext,
    ActionSpec,
    Change,
    Handler,
    Outcome,
    Payload,
    Preview,
    Registry,
    RegistryError,
    RiskClass,
    TargetKind,
    TargetRef,
)
from opsgate.core.audit.redaction import mask_email, mask_name, mask_phone, mask_text
from opsgate.core.canonical import canonical_json, digest
from opsgate.core.clock import Clock, SystemClock
from opsgate.core.errors import DomainError
from opsgate.core.identity.actors import Actor
from opsgate.core.ids import new_id
from opsgate.db.base import NAMING_CONVENTION, JSONType, UTCDateTime

if TYPE_CHECKING:
    import typer
    from sqlalchemy import MetaData
    from sqlalchemy.orm import Session

__all__ = [
    "NAMING_CONVENTION",
    "ActionContext",
    "ActionSpec",
    "Actor",
    "Change",
    "Clock",
    "DomainError",
    "Handler",
    "JSONType",
    "Outcome",
    "Payload",
    "Plugin",
    "Preview",
    "ReadContext",
    "Record",
    "RecordField",
    "RecordView",
    "Registry",
    "RegistryError",
    "RiskClass",
    "SearchHit",
    "SearchProvider",
    "SearchResults",
    "SystemClock",
    "TargetKind",
    "TargetRef",
    "UTCDateTime",
    "canonical_json",
    "digest",
    "mask_email",
    "mask_name",
    "mask_phone",
    "mask_text",
    "new_id",
]


@dataclass(frozen=True)
class ReadContext:
    """What a search provider or a record view may know: a read-only session on opsgate's
    database (where a plugin's own tables live), the reader, the time, and whether personal
    data may be shown unmasked (an audited reveal)."""

    session: Session
    actor: Actor
    now: datetime
    reveal_pii: bool = False
    # The request this read serves: sent as X-Request-ID when the record lives in a team's
    # service (a fresh one when None).
    request_id: str | None = None


@dataclass(frozen=True)
class SearchHit:
    """One record found: its target, a label, and the fields shown (masked as the provider
    decides: search results never carry unmasked personal data)."""

    kind: str
    id: str
    label: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    # One line the console shows beside the label (a balance, a status): display text only.
    detail: str = ""

    @property
    def target(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class SearchResults:
    """What a provider found. `term_kind` says what the query was taken for (an ID, an
    email, a name…): it is what the audit trail records instead of the term itself, with a
    keyed hash of `term`, the query as the provider matched it (normalised, so that one
    person typed two ways has one hash; the query stripped when None)."""

    hits: Sequence[SearchHit] = ()
    term_kind: str | None = None
    term: str | None = None

    @property
    def total(self) -> int:
        return len(self.hits)


class SearchProvider(Protocol):
    """Backs the console search and `GET /api/v1/search` for the kinds it names. opsgate
    checks the capability, counts and audits the search; `search` only finds, and must
    return personal data masked (`mask_*`) whatever `ctx.reveal_pii` says."""

    name: str
    kinds: Sequence[str]

    def search(self, ctx: ReadContext, query: str, limit: int) -> SearchResults: ...


@dataclass(frozen=True)
class RecordField:
    """One labelled value of a record. `pii` values are masked unless the reader revealed
    them; `link` makes the value a link to another target (`kind:id`)."""

    name: str
    label: str
    value: Any
    pii: bool = False
    link: str | None = None


@dataclass(frozen=True)
class Record:
    """A record as the console and `GET /api/v1/records/{kind}/{id}` show it, generically."""

    kind: str
    id: str
    title: str
    fields: Sequence[RecordField] = ()
    # Related targets (`kind:id` → label), shown as links.
    related: Mapping[str, str] = field(default_factory=dict)
    # Tables of related rows: title → rows (each a mapping of label → value).
    sections: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordView:
    """How the console and the API show one target kind.

    - `read(ctx, id)`: the Record, None when there is none. Fields marked `pii` must be
      masked unless `ctx.reveal_pii` (set only after the `reveal` action ran);
    - `collection`: a URL name (`customers`): the record is also at `/console/<collection>/<id>`
      and `/api/v1/<collection>/<id>`, and search answers group this kind under it;
    - `reveal`: the name of a read action on this kind (through the gateway: permissioned,
      with a reason, audited) that unlocks the `pii` fields for one page;
    - `template`, `context(ctx, id)`: a console panel of the plugin's own, a template in
      `Plugin.templates` given the generic context plus what `context` returns;
    - `within(ctx, id)`: the `kind:id` target whose page shows this record as a row; the
      console's page of this record sends the browser there (to `#<kind>-<id>`).
    """

    kind: str
    read: Callable[[ReadContext, str], Record | None]
    collection: str | None = None
    reveal: str | None = None
    template: str | None = None
    context: Callable[[ReadContext, str], Mapping[str, Any] | None] | None = None
    within: Callable[[ReadContext, str], str | None] | None = None


@dataclass(frozen=True)
class Plugin:
    """What a plugin declares. Every member but `name` is optional.

    - `target_kinds`, `actions`: registered like opsgate's own (their names must not clash);
    - `search`, `views`: search providers and record views (console and API);
      `search_hint`, one sentence under the console's search box saying what they find;
    - `metadata`, `migrations`: the plugin's own tables and a directory whose `versions/`
      holds its Alembic revisions (no env.py: opsgate's runs them with `metadata`; write
      them with `opsgate db revision --plugin NAME`), migrated by `opsgate db upgrade`
      after opsgate's own into the version table `alembic_version_<name>`;
    - `policy`: the policy file used when `OPSGATE_POLICY` is unset and this is the only
      enabled plugin that ships one; `integrations`, likewise for `OPSGATE_INTEGRATIONS`;
    - `declarations`: a declarative file (target kinds and actions bound to a service, no
      Python), loaded as if its contents were listed here;
    - `templates`: a directory of Jinja templates for console panels;
    - `cli`: a Typer app mounted as `opsgate <name> …`;
    - `bench_router`: uncontrolled twins of its actions, mounted only for `make bench`.
    """

    name: str
    version: str = "0"
    target_kinds: Sequence[TargetKind] = ()
    actions: Sequence[ActionSpec] = ()
    search: Sequence[SearchProvider] = ()
    search_hint: str = ""
    views: Sequence[RecordView] = ()
    metadata: MetaData | None = None
    migrations: Path | None = None
    policy: Path | None = None
    integrations: Path | None = None
    declarations: Path | None = None
    templates: Path | None = None
    cli: typer.Typer | None = None
    bench_router: Any = None
