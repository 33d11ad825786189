"""Process settings, read once from the environment (prefix `OPSGATE_`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_POLICY = Path(__file__).parent / "domain" / "policy.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSGATE_", extra="ignore")

    database_url: str = Field(default="sqlite:///./opsgate.db")
    policy: Path = Field(default=DEMO_POLICY)
    # Remote backends and webhook subscriptions (core/integrations.py); unset: none.
    integrations: Path | None = None
    # How often each `opsgate serve` process asks remote backends about calls whose outcome is
    # unknown (core/reconcile.py); 0: never (run `opsgate reconcile` from cron instead).
    reconcile_interval_seconds: int = Field(default=60, ge=0, le=3600)
    log_level: str = Field(default="INFO")
    # JSON lines for machines; `console` renders them for a human at a terminal.
    log_format: str = Field(default="json", pattern="^(json|console)$")
    token_default_ttl_days: int = Field(default=30, ge=1, le=365)
    # How long a stored idempotent answer is replayed (then `opsgate idempotency prune`).
    idempotency_retention_hours: int = Field(default=24, ge=1, le=24 * 30)
    # Audit records younger than this are never archived (PCI DSS 10.5.1: 12 months, plus a
    # margin); `opsgate audit archive` without --before archives what is older.
    audit_retention_days: int = Field(default=400, ge=366)
    # A key claimed longer ago than this by a request that never finished (its process died)
    # may be taken over by a retry; nothing of that request committed.
    idempotency_lock_timeout_seconds: int = Field(default=300, ge=5, le=3600)
    # Mount `/bench/*` endpoints that do the same work as an action with no controls.
    # Only `make bench` sets this; never enable it in production.
    bench_endpoints: bool = False
    # The address operators reach opsgate at (e.g. https://opsgate.example.com): webhook
    # events link to the console with it. Unset: events carry no links.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    # Deliver webhook events from a background thread of each `opsgate serve` process. Off:
    # run `opsgate webhooks deliver` instead (events are queued either way).
    webhook_delivery: bool = True
    # Request bodies (web/bounded_input.py): refused (413) beyond these sizes before they are
    # read, the smaller for requests that carry no credentials at all; and (408) when the whole
    # body has not arrived within the read timeout.
    body_limit_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    body_limit_unauthenticated_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    body_read_timeout_seconds: float = Field(default=10, gt=0, le=300)
    # `opsgate serve`: an idle keep-alive connection is closed after this many seconds.
    keep_alive_timeout_seconds: int = Field(default=5, ge=1, le=300)

    # --- the operator console (docs/console.md) ---
    # Signs session cookies and CSRF tokens; every process of one deployment needs the same.
    # Unset: a development key is generated once into `secret_key_file` (not for production).
    secret_key: SecretStr | None = Field(default=None, min_length=32)
    # The key before the last rotation: cookies and tokens it signed are still accepted.
    secret_key_previous: SecretStr | None = Field(default=None, min_length=32)
    secret_key_file: Path = Field(default=Path(".opsgate-secret-key"))
    console_idle_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)
    console_absolute_timeout_hours: int = Field(default=12, ge=1, le=24 * 7)
    # Approving a money-moving request needs a password check no older than this.
    console_reauth_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Failed sign-ins allowed per username and per address within the window.
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_window_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Secure cookies: None follows the request's scheme (HTTPS, as uvicorn sees it).
    cookie_secure: bool | None = None

    # --- single sign-on (OpenID Connect; docs/console.md) ---
    # Unset: single sign-on is off and the sign-in page offers only passwords. Set: the
    # provider's `{issuer}/.well-known/openid-configuration` is read at the first SSO sign-in.
    oidc_issuer: str | None = Field(default=None, min_length=1)
    oidc_client_id: str | None = Field(default=None, min_length=1)
    oidc_client_secret: SecretStr | None = Field(default=None, min_length=1)
    # The ID token claim that lists the person's groups (mapped to roles by the policy's
    # `[identity_provider] group_roles`).
    oidc_groups_claim: str = Field(default="groups", min_length=1)

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer is not None and (
            self.oidc_client_id is None or self.oidc_client_secret is None
        ):
            raise ValueError(
                "OPSGATE_OIDC_ISSUER is set, so OPSGATE_OIDC_CLIENT_ID and "
                "OPSGATE_OIDC_CLIENT_SECRET must be set too"
            )
        return self


@cache
def get_settings() -> Settings:
    return Settings()
