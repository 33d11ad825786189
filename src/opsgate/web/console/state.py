"""What the console keeps for the life of the process: keys, templates and session rules."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, StrictUndefined

from opsgate.core.audit import redaction
from opsgate.core.identity.console_sessions import SessionRules
from opsgate.core.identity.passwords import Throttle
from opsgate.settings import Settings
from opsgate.web.console import formatting
from opsgate.web.security import Signing, secret_keys

TEMPLATES = Path(__file__).parent.parent / "templates"
STATIC = Path(__file__).parent.parent / "static"


def templates(plugins: Mapping[str, Path] | None = None) -> Environment:
    """Jinja2 with autoescaping on for every template (and for strings rendered directly).
    A plugin's templates are found under its name (`demo/customer.html`) and may extend
    opsgate's own (`base.html`, `_macros.html`)."""
    own = FileSystemLoader(TEMPLATES)
    by_plugin = {name: FileSystemLoader(path) for name, path in (plugins or {}).items()}
    env = Environment(
        loader=ChoiceLoader([own, PrefixLoader(by_plugin)]) if by_plugin else own,
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        money=formatting.money,
        when=formatting.when,
        duration=formatting.duration,
        humanize=formatting.humanize,
        field_label=formatting.field_label,
        pretty_json=formatting.pretty_json,
        # The API masks with the same functions: a page never hides what an answer shows.
        mask_name=redaction.mask_name,
        mask_email=redaction.mask_email,
        mask_phone=redaction.mask_phone,
    )
    return env


@dataclass(frozen=True)
class ConsoleState:
    signing: Signing
    templates: Environment
    rules: SessionRules
    cookie_secure: bool | None

    @classmethod
    def build(cls, settings: Settings, plugins: Mapping[str, Path] | None = None) -> ConsoleState:
        rules = SessionRules(
            idle_timeout=timedelta(minutes=settings.console_idle_timeout_minutes),
            absolute_timeout=timedelta(hours=settings.console_absolute_timeout_hours),
            reauth_after=timedelta(minutes=settings.console_reauth_minutes),
            throttle=Throttle(
                max_failures=settings.login_max_failures,
                window=timedelta(minutes=settings.login_window_minutes),
                key=derived_key(settings, "opsgate.console.typed-username"),
            ),
        )
        return cls(
            Signing(secret_keys(settings)), templates(plugins), rules, settings.cookie_secure
        )


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A key for one purpose, derived from the current secret key (so one secret serves
    every purpose without any two sharing a key)."""
    current = secret_keys(settings)[-1].encode()
    return hmac.new(current, purpose.encode(), hashlib.sha256).digest()


def get_console(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


ConsoleDep = Annotated[ConsoleState, Depends(get_console)]
