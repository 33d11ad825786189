"""Integrations: remote backends that run actions, and webhook subscriptions.

One TOML file (setting `OPSGATE_INTEGRATIONS`; none by default: every action runs in-process
and nothing is notified), validated at start-up like the policy, naming every mistake:

    [backends.ledger]
    url = "http://127.0.0.1:8100"
    actions = ["payment.reverse", "account.adjust_balance"]
    secret_env = "OPSGATE_LEDGER_SECRET"     # the environment variable holding the secret
    connect_timeout_seconds = 1.0
    timeout_seconds = 5.0                     # per attempt
    max_attempts = 3
    backoff_seconds = 0.2                     # doubled per retry, with jitter

    [webhooks.risk_slack]
    url = "https://hooks.example.com/T000/B000"
    format = "slack"                          # or "json" (the default)
    events = ["approval.requested", "approval.decided"]
    secret_env = "OPSGATE_WEBHOOK_RISK_SECRET"

Secrets never appear in the file: it names the environment variables that hold them, and
start-up fails when one is unset or too short. A backend's URL must be `https://` unless its
host is a loopback address (127.0.0.0/8, ::1, localhost).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opsgate.core.actions.registry import Registry
from opsgate.core.integrations.signing import MIN_SECRET_LENGTH

# What a subscription without `events` gets: the approval events.
DEFAULT_WEBHOOK_EVENTS = frozenset(
    {"approval.requested", "approval.decided", "approval.executed", "approval.expired"}
)
# Only when listed:
# - `token.created`: a new API token, announced to its owner (core/identity/tokens.py); its body has
#   `token` and `user` instead of `approval`, so receivers of approvals are not surprised;
# - `audit.anchor` (core/audit/anchoring.py): a signed chain head, for an external log.
WEBHOOK_EVENTS = DEFAULT_WEBHOOK_EVENTS | {"token.created", "audit.anchor"}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in value.split("/", 3)[2]:
        raise ValueError("must not carry credentials (name the secret with secret_env)")
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def backend_url(value: str) -> str:
    """A backend carries money movements and their answers: TLS, unless it is on this
    machine (the signature protects integrity, not the payload's confidentiality)."""
    url = _http_url(value)
    if url.startswith("http://") and not _is_loopback(httpx.URL(url).host):
        raise ValueError(
            "must be an https:// URL (plain http:// is allowed only to a loopback address: "
            "127.0.0.1, ::1 or localhost)"
        )
    return url


class BackendDocument(_Strict):
    url: str
    actions: list[str] = Field(min_length=1)
    secret_env: str = Field(pattern=_ENV_NAME.pattern)
    connect_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_seconds: float = Field(default=0.2, ge=0, le=30)

    _url = field_validator("url")(backend_url)


class WebhookDocument(_Strict):
    url: str
    events: list[str] = Field(default_factory=lambda: sorted(DEFAULT_WEBHOOK_EVENTS), min_length=1)
    format: Literal["json", "slack"] = "json"
    secret_env: str | None = Field(default=None, pattern=_ENV_NAME.pattern)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=8, ge=1, le=30)

    _url = field_validator("url")(_http_url)

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - WEBHOOK_EVENTS)
        if unknown:
            raise ValueError(
                f"unknown event(s) {', '.join(unknown)}; known: {', '.join(sorted(WEBHOOK_EVENTS))}"
            )
        return value


class IntegrationsDocument(_Strict):
    backends: dict[str, BackendDocument] = Field(default_factory=dict)
    webhooks: dict[str, WebhookDocument] = Field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    """A remote service that runs some actions. `secret` signs requests to it."""

    name: str
    url: str
    actions: frozenset[str]
    secret: str = field(repr=False)
    connect_timeout: float = 1.0
    timeout: float = 5.0
    max_attempts: int = 3
    backoff: float = 0.2


@dataclass(frozen=True)
class Webhook:
    """A subscription: where to deliver which events, in which format, signed how."""

    name: str
    url: str
    events: frozenset[str]
    format: str = "json"
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    max_attempts: int = 8


@dataclass(frozen=True)
class Integrations:
    backends: Mapping[str, Backend] = field(default_factory=dict)
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)

    def backend_for(self, action: str) -> Backend | None:
        """The backend bound to `action`, or None when it runs in-process."""
        for backend in self.backends.values():
            if action in backend.actions:
                return backend
        return None

    def subscribers(self, event_type: str) -> list[Webhook]:
        return [hook for _, hook in sorted(self.webhooks.items()) if event_type in hook.events]


NO_INTEGRATIONS = Integrations()


class IntegrationsError(Exception):
    """The integrations file cannot be used. `problems` lists each mistake with its place."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            f"integrations {source} are invalid:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def secret_from_env(env: Mapping[str, str], name: str, place: str, problems: list[str]) -> str:
    value = env.get(name, "")
    if len(value) < MIN_SECRET_LENGTH:
        problems.append(
            f"{place}: environment variable {name} must hold a secret of at least "
            f"{MIN_SECRET_LENGTH} characters" + (" (it is unset)" if not value else "")
        )
    return value


def parse_integrations(
    text: str,
    registry: Registry,
    *,
    source: str = "<integrations>",
    env: Mapping[str, str] | None = None,
) -> Integrations:
    """Validate integrations text against `registry` and the environment; raise
    IntegrationsError listing every problem."""
    environment: Mapping[str, str] = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IntegrationsError(source, [f"not valid TOML: {exc}"]) from exc
    try:
        document = IntegrationsDocument.model_validate(raw)
    except ValidationError as exc:
        found = [
            ".".join(str(p) for p in error["loc"])
            + ": "
            + ("unknown key" if error["type"] == "extra_forbidden" else error["msg"])
            for error in exc.errors()
        ]
        raise IntegrationsError(source, found) from exc

    problems: list[str] = []
    backends: dict[str, Backend] = {}
    bound: dict[str, str] = {}
    for name, doc in sorted(document.backends.items()):
        place = f"backends.{name}"
        if not _NAME.fullmatch(name):
            problems.append(f"{place}: a backend name must be lower snake case")
        for action in doc.actions:
            if registry.get(action) is None:
                problems.append(f"{place}.actions: {action!r} is not a registered action")
            elif action in bound:
                problems.append(
                    f"{place}.actions: {action!r} is already bound to backend {bound[action]!r}"
                )
            bound.setdefault(action, name)
        secret = secret_from_env(environment, doc.secret_env, f"{place}.secret_env", problems)
        backends[name] = Backend(
            name=name,
            url=doc.url,
            actions=frozenset(doc.actions),
            secret=secret,
            connect_timeout=doc.connect_timeout_seconds,
            timeout=doc.timeout_seconds,
            max_attempts=doc.max_attempts,
            backoff=doc.backoff_seconds,
        )
    webhooks: dict[str, Webhook] = {}
    for name, hook in sorted(document.webhooks.items()):
        place = f"webhooks.{name}"
        if not _NAME.fullmatch(name):
            problems.append(f"{place}: a webhook name must be lower snake case")
        if hook.format == "json" and hook.secret_env is None:
            problems.append(f"{place}.secret_env: JSON webhooks are signed; name the secret")
        hook_secret = (
            secret_from_env(environment, hook.secret_env, f"{place}.secret_env", problems)
            if hook.secret_env is not None
            else None
        )
        webhooks[name] = Webhook(
            name=name,
            url=hook.url,
            events=frozenset(hook.events),
            format=hook.format,
            secret=hook_secret,
            timeout=hook.timeout_seconds,
            max_attempts=hook.max_attempts,
        )
    if problems:
        raise IntegrationsError(source, problems)
    return Integrations(backends=backends, webhooks=webhooks)


def load_integrations(
    path: Path | None,
    registry: Registry,
    env: Mapping[str, str] | None = None,
    declared: Sequence[Backend] = (),
) -> Integrations:
    """Read and validate the integrations file (None: no file), joined with the backends
    that declarations bring (opsgate/declarations.py); raise IntegrationsError when a name
    or an action's binding is claimed twice, or a remote target kind's backend is missing."""
    if path is None:
        found = NO_INTEGRATIONS
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise IntegrationsError(str(path), [f"cannot read: {exc.strerror}"]) from exc
        found = parse_integrations(text, registry, source=str(path), env=env)
    joined = with_declared(found, declared, str(path) if path else "<declarations>")
    unread = [
        f"target_kinds.{kind.name}: its records are read from backend {kind.remote!r}, "
        "which is not configured"
        for kind in registry.target_kinds()
        if kind.remote is not None and kind.remote not in joined.backends
    ]
    if unread:
        raise IntegrationsError(str(path) if path else "<integrations>", unread)
    return joined


def with_declared(
    integrations: Integrations, declared: Sequence[Backend], source: str
) -> Integrations:
    """`integrations` plus the declared backends, each checked against the file's."""
    if not declared:
        return integrations
    problems = []
    backends = dict(integrations.backends)
    for backend in declared:
        if backend.name in backends:
            problems.append(
                f"backends.{backend.name}: declared in declarations and in the integrations file"
            )
        for action in sorted(backend.actions):
            other = integrations.backend_for(action)
            if other is not None:
                problems.append(
                    f"backends.{other.name}.actions: {action!r} is a declarative action, "
                    f"bound to {backend.name!r} by its declaration"
                )
        backends[backend.name] = backend
    if problems:
        raise IntegrationsError(source, problems)
    return Integrations(backends=backends, webhooks=integrations.webhooks)
