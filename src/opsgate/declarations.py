"""Declarative target kinds and actions: a team's service behind opsgate with no Python.

A TOML file (a plugin's `Plugin.declarations`, and/or the setting `OPSGATE_DECLARATIONS`),
described in docs/adding-an-action.md ("Declarative actions"):

    [backends.tickets]                  # the service: as in the integrations file, no `actions`
    url = "https://tickets.internal"
    secret_env = "OPSGATE_TICKETS_SECRET"

    [target_kinds.ticket]               # records the service owns, read over signed HTTP
    backend = "tickets"
    fields = { version = "Version", status = "Status", email = "Customer email" }
    pii = ["email"]
    search = true

    [actions."ticket.close"]            # runs in the service: POST /v1/actions/ticket.close
    label = "Close a ticket"
    description = "..."
    risk = "write"
    target_kind = "ticket"
    sensitive = ["note"]
    payload_schema = { type = "object", required = ["resolution"], properties = { ... } }

Every problem is named with its place (`declarations.actions."ticket.close".payload_schema…`);
the file is loaded with the registry, so a bad one stops start-up and `opsgate policy check`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opsgate.core.actions.json_payloads import payload_model, schema_problems
from opsgate.core.actions.registry import (
    ActionContext,
    ActionSpec,
    Change,
    Outcome,
    RiskClass,
    TargetKind,
)
from opsgate.core.errors import DomainError
from opsgate.core.integrations import remote_targets
from opsgate.core.integrations.backends import BackendClient
from opsgate.core.integrations.config import Backend, backend_url, secret_from_env
from opsgate.plugin import RecordView, SearchProvider
from opsgate.remote_records import RemoteRecordView, RemoteSearch

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ENV_NAME = r"^[A-Z][A-Z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceDocument(_Strict):
    url: str
    secret_env: str = Field(pattern=_ENV_NAME)
    connect_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_seconds: float = Field(default=0.2, ge=0, le=30)

    _url = field_validator("url")(backend_url)


class KindDocument(_Strict):
    backend: str
    label: str | None = None
    # field name → label; `version` must be among them.
    fields: dict[str, str] = Field(min_length=1)
    pii: list[str] = Field(default_factory=list)
    # field → target kind: the field's value is the ID of a record of that kind.
    links: dict[str, str] = Field(default_factory=dict)
    title_field: str | None = None
    search: bool = False


class ActionDocument(_Strict):
    label: str = Field(min_length=1, max_length=100)
    description: str = Field(min_length=1, max_length=2000)
    risk: RiskClass
    target_kind: str
    # Default: the target kind's backend.
    backend: str | None = None
    payload_schema: dict[str, Any]
    sensitive: list[str] = Field(default_factory=list)


class DeclarationsDocument(_Strict):
    backends: dict[str, ServiceDocument] = Field(default_factory=dict)
    target_kinds: dict[str, KindDocument] = Field(default_factory=dict)
    actions: dict[str, ActionDocument] = Field(default_factory=dict)


class DeclarationsError(Exception):
    """The declarations cannot be used. `problems` lists each mistake with its place."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            f"declarations {source} are invalid:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Declarations:
    """What a declarations file contributes, ready to register and bind."""

    source: str
    backends: tuple[Backend, ...] = ()
    target_kinds: tuple[TargetKind, ...] = ()
    actions: tuple[ActionSpec, ...] = ()
    search: tuple[SearchProvider, ...] = ()
    views: tuple[RecordView, ...] = ()
    # Secrets the environment does not hold (their places): refused when the integrations
    # are loaded (serve, the CLI commands that call services), not by `policy check`.
    missing_secrets: tuple[str, ...] = ()


def _place(*parts: str) -> str:
    shown = [f'"{p}"' if "." in p else p for p in parts]
    return ".".join(["declarations", *shown])


def _run_in_service(ctx: ActionContext, target: object, payload: Any) -> Outcome:
    # Declarative actions are bound to their service by their declaration (Integrations),
    # so the gateway never reaches this; refuse rather than do nothing silently.
    raise DomainError("not_in_process", f"{ctx.action} runs only in its service.")


def _payload_preview(ctx: ActionContext, target: Any, payload: Any) -> Change:
    """What a reviewer sees: each payload field beside the record's current value of the same
    name (when it has one). The service's own before/after is recorded when it executes."""
    proposed = payload.model_dump(mode="json")
    state = remote_targets.snapshot(target)
    return Change(before={k: state[k] for k in proposed if k in state}, after=proposed)


def parse_declarations(
    text: str,
    *,
    source: str = "<declarations>",
    env: Mapping[str, str] | None = None,
    client: BackendClient | None = None,
) -> Declarations:
    """Validate a declarations file and build its kinds, actions, backends, search providers
    and record views; raise DeclarationsError naming every problem with its place."""
    environment: Mapping[str, str] = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationsError(source, [f"declarations: not valid TOML: {exc}"]) from exc
    try:
        document = DeclarationsDocument.model_validate(raw)
    except ValidationError as exc:
        found = [
            _place(*(str(p) for p in error["loc"]))
            + ": "
            + ("unknown key" if error["type"] == "extra_forbidden" else error["msg"])
            for error in exc.errors()
        ]
        raise DeclarationsError(source, found) from exc
    problems: list[str] = []
    missing: list[str] = []
    reads = client or BackendClient()
    bound: dict[str, set[str]] = {name: set() for name in document.backends}
    actions = _actions(document, bound, problems)
    backends = _backends(document, bound, environment, problems, missing)
    kinds, search, views = _kinds(document, backends, reads, problems)
    if problems:
        raise DeclarationsError(source, problems)
    return Declarations(
        source,
        tuple(backends.values()),
        tuple(kinds),
        tuple(actions),
        tuple(search),
        tuple(views),
        tuple(missing),
    )


def _backends(
    document: DeclarationsDocument,
    bound: Mapping[str, set[str]],
    env: Mapping[str, str],
    problems: list[str],
    missing: list[str],
) -> dict[str, Backend]:
    """The declared services. An unset or short secret goes to `missing`: the file is still
    valid (`opsgate policy check` in CI has no secrets), the process that calls is not."""
    backends = {}
    for name, doc in sorted(document.backends.items()):
        if not _NAME.fullmatch(name):
            problems.append(f"{_place('backends', name)}: a backend name must be lower snake case")
        secret = secret_from_env(
            env, doc.secret_env, _place("backends", name, "secret_env"), missing
        )
        backends[name] = Backend(
            name=name,
            url=doc.url,
            actions=frozenset(bound.get(name, ())),
            secret=secret,
            connect_timeout=doc.connect_timeout_seconds,
            timeout=doc.timeout_seconds,
            max_attempts=doc.max_attempts,
            backoff=doc.backoff_seconds,
        )
    return backends


def _kinds(
    document: DeclarationsDocument,
    backends: Mapping[str, Backend],
    client: BackendClient,
    problems: list[str],
) -> tuple[list[TargetKind], list[SearchProvider], list[RecordView]]:
    kinds: list[TargetKind] = []
    search: list[SearchProvider] = []
    views: list[RecordView] = []
    for name, doc in sorted(document.target_kinds.items()):
        place = _place("target_kinds", name)
        backend = backends.get(doc.backend)
        if backend is None:
            problems.append(f"{place}.backend: no backend {doc.backend!r} is declared")
        if "version" not in doc.fields:
            problems.append(f"{place}.fields: must declare 'version' (it detects staleness)")
        for what, names in (("pii", doc.pii), ("links", list(doc.links))):
            for field in names:
                if field not in doc.fields:
                    problems.append(f"{place}.{what}: {field!r} is not among the fields")
        if doc.title_field is not None and doc.title_field not in doc.fields:
            problems.append(f"{place}.title_field: {doc.title_field!r} is not among the fields")
        kinds.append(
            TargetKind(
                name=name,
                load=_not_stored_here,
                snapshot=remote_targets.snapshot,
                fields=frozenset(doc.fields),
                remote=doc.backend,
            )
        )
        if backend is None:
            continue
        pii = frozenset(doc.pii)
        if doc.search:
            search.append(RemoteSearch(f"{name}_search", (name,), backend, client, pii))
        view = RemoteRecordView(
            name, backend, client, dict(doc.fields), pii, dict(doc.links), doc.title_field
        )
        views.append(RecordView(name, read=view.read))
    return kinds, search, views


def _not_stored_here(session: object, target_id: str, lock: bool) -> object | None:
    # A remote kind has no rows in opsgate's database: its records are read from its service
    # before any transaction (core/integrations/remote_targets.py). Nothing here to load.
    return None


def _actions(
    document: DeclarationsDocument, bound: dict[str, set[str]], problems: list[str]
) -> list[ActionSpec]:
    specs = []
    for name, doc in sorted(document.actions.items()):
        place = _place("actions", name)
        kind = document.target_kinds.get(doc.target_kind)
        if kind is None:
            problems.append(f"{place}.target_kind: no target kind {doc.target_kind!r} is declared")
            continue
        backend = doc.backend or kind.backend
        if backend not in bound:
            problems.append(f"{place}.backend: no backend {backend!r} is declared")
        else:
            bound[backend].add(name)
        found = [f"{place}.payload_schema.{p}" for p in schema_problems(doc.payload_schema)]
        properties = doc.payload_schema.get("properties")
        for field in doc.sensitive:
            if not isinstance(properties, Mapping) or field not in properties:
                found.append(f"{place}.sensitive: {field!r} is not a payload field")
        problems += found
        if found:
            continue
        specs.append(
            ActionSpec(
                name=name,
                label=doc.label,
                description=doc.description,
                risk=doc.risk,
                target_kind=doc.target_kind,
                payload_model=payload_model(name, doc.payload_schema, doc.sensitive),
                handler=_run_in_service,
                preview=_payload_preview,
            )
        )
    return specs


def load_declarations(
    path: Path, env: Mapping[str, str] | None = None, client: BackendClient | None = None
) -> Declarations:
    """Read and validate a declarations file; raise DeclarationsError naming the problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeclarationsError(str(path), [f"declarations: cannot read: {exc.strerror}"]) from exc
    return parse_declarations(text, source=str(path), env=env, client=client)


def merged(found: Sequence[Declarations]) -> Declarations:
    """Several declaration files as one (names clash through the registry)."""
    return Declarations(
        ", ".join(d.source for d in found),
        tuple(b for d in found for b in d.backends),
        tuple(k for d in found for k in d.target_kinds),
        tuple(a for d in found for a in d.actions),
        tuple(s for d in found for s in d.search),
        tuple(v for d in found for v in d.views),
        tuple(m for d in found for m in d.missing_secrets),
    )
