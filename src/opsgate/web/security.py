"""What keeps the console safe in a browser: signing keys, the session cookie, CSRF tokens,
the same-origin check and the security headers.

Signing is itsdangerous's (HMAC-SHA1 key derivation, constant-time comparison); nothing here
signs or compares by hand. Keys come from OPSGATE_SECRET_KEY (and OPSGATE_SECRET_KEY_PREVIOUS
during a rotation: what the old key signed is still accepted, the new key signs). With no key
set, a development key is generated once into OPSGATE_SECRET_KEY_FILE so that `make run`
works; production sets the key (docs/console.md).

CSRF: a per-session token, `itsdangerous`-signed over the session ID (before sign-in: over a
random pre-session cookie), carried in a hidden form field and checked by one dependency
(`web/console/auth.py`) on every unsafe request, together with the browser's `Origin` and
`Sec-Fetch-Site` headers. We chose this over fastapi-csrf-protect after reading its source
(1.0.7): its double-submit cookie is not bound to the session (a cookie planted from a
sibling subdomain pairs with any token the attacker obtained), it sets one cookie per
rendered form, so a form open in another tab stops working whenever a page is rendered,
it reads a form-body token by string-replacing the raw body into JSON, and its settings
are class-level globals shared by every app in the process. The signed per-session token has
none of these problems, works across tabs, and ends with the session.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsgate.settings import Settings, refuse_unsafe_production

log = structlog.get_logger("opsgate.security")

SESSION_COOKIE = "opsgate_session"
PRESESSION_COOKIE = "opsgate_presession"
CSRF_FIELD = "csrf_token"
CONSOLE_PREFIX = "/console"
STATIC_PREFIX = "/console/static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # Swagger UI's stylesheet draws its icons from data: URLs.
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
# JSON and problem responses: nothing in them may load, run or be framed.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Files that are the same for everyone (the console's CSS and JS, the docs' Swagger UI) may be
# cached; every other response may carry personal or audit data and is never stored.
CACHEABLE_PREFIXES = (STATIC_PREFIX, "/api/v1/docs/assets")


def _generated_key(path: Path) -> str:
    """Read the development key at `path`, creating it (mode 0600) when absent. Safe when
    several processes start at once: the file appears whole or not at all."""
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    try:
        os.link(draft, path)  # fails when another process won the race
        log.warning("development_secret_key_created", path=str(path))
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text(encoding="utf-8").strip()


def secret_keys(settings: Settings) -> list[str]:
    """The signing keys, oldest first (itsdangerous signs with the last, accepts any)."""
    if settings.secret_key is None:
        # In production a per-host key is refused, not generated (settings.py).
        refuse_unsafe_production(settings)
        return [_generated_key(settings.secret_key_file)]
    keys = [settings.secret_key.get_secret_value()]
    if settings.secret_key_previous is not None:
        keys.insert(0, settings.secret_key_previous.get_secret_value())
    return keys


class Signing:
    """The console's signed values: the session cookie and CSRF tokens."""

    def __init__(self, keys: list[str]) -> None:
        self._cookies = URLSafeSerializer(keys, salt="opsgate.console.session")
        self._csrf = URLSafeSerializer(keys, salt="opsgate.console.csrf")

    def session_cookie(self, session_id: str, secret: str) -> str:
        return self._cookies.dumps([session_id, secret])

    def read_session_cookie(self, value: str | None) -> tuple[str, str] | None:
        """The (session ID, secret) a cookie carries, or None when it is not one we signed."""
        if not value:
            return None
        try:
            loaded = self._cookies.loads(value)
        except BadSignature:
            return None
        if (
            isinstance(loaded, list)
            and len(loaded) == 2
            and all(isinstance(part, str) for part in loaded)
        ):
            return loaded[0], loaded[1]
        return None

    def csrf_token(self, binding: str) -> str:
        return self._csrf.dumps(binding)

    def csrf_valid(self, token: str | None, binding: str | None) -> bool:
        if not token or binding is None:
            return False
        try:
            return bool(self._csrf.loads(token) == binding)
        except BadSignature:
            return False

    def csrf_binding(self, request: Request) -> str | None:
        """What this browser's CSRF token is bound to: its session, or before sign-in its
        pre-session cookie; None when it has neither."""
        session = self.read_session_cookie(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return f"s:{session[0]}"
        nonce = request.cookies.get(PRESESSION_COOKIE)
        return f"p:{nonce}" if nonce else None


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site. Browsers send
    `Sec-Fetch-Site` and `Origin` on cross-site form posts; clients that send neither (curl,
    tests) are judged by the CSRF token alone."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def cookie_secure(request: Request, configured: bool | None) -> bool:
    return configured if configured is not None else request.url.scheme == "https"


class SecurityHeadersMiddleware:
    """Security headers on every response: API, problems, console, docs and static files.
    HTML pages get the console's Content-Security-Policy, everything else one that allows
    nothing; `no-store` on all but the static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        cacheable = path.startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                html = headers.get("content-type", "").startswith("text/html")
                page = html or path == "/" or path.startswith((CONSOLE_PREFIX, "/api/v1/docs"))
                headers["Content-Security-Policy"] = (
                    CONTENT_SECURITY_POLICY if page else API_CONTENT_SECURITY_POLICY
                )
                if not cacheable:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
