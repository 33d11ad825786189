"""Process settings, read once from the environment (prefix `OPSGATE_`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from opsgate.core.faults import FaultPoint


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSGATE_", extra="ignore")

    # The app's database. On PostgreSQL: a role that owns nothing (docs/operations.md).
    database_url: str = Field(default="sqlite:///./opsgate.db")
    # `production` refuses to start on the per-host fallbacks meant for a laptop: a generated
    # secret key or anchor key, test-only switches (production_refusals below).
    environment: Literal["development", "production"] = "development"
    # The owner's URL, for `opsgate db upgrade` only: it owns the tables, migrates them and
    # grants the app's role row rights. Unset: migrations connect with `database_url`.
    migration_database_url: str | None = None
    # The policy file. Unset: the one the only enabled plugin ships, else opsgate's built-in
    # administration-only policy (opsgate/plugins.py).
    policy: Path | None = None
    # Which installed plugins are enabled (opsgate/plugins.py): unset, all; `none`, none; or a
    # comma-separated list of entry-point names or `module:attribute` paths.
    plugins: str | None = None
    # Remote backends and webhook subscriptions (core/integrations/config.py); unset: none.
    integrations: Path | None = None
    # Declarative target kinds and actions without a plugin (opsgate/declarations.py); they
    # appear as the plugin `declarations`. Unset: none.
    declarations: Path | None = None
    # How often each `opsgate serve` process asks remote backends about calls whose outcome is
    # unknown (core/integrations/reconcile.py); 0: never (run `opsgate reconcile` from cron
    # instead).
    reconcile_interval_seconds: int = Field(default=60, ge=0, le=3600)
    log_level: str = Field(default="INFO")
    # JSON lines for machines; `console` renders them for a human at a terminal.
    log_format: str = Field(default="json", pattern="^(json|console)$")
    token_default_ttl_days: int = Field(default=30, ge=1, le=365)
    # People mint their own API tokens in the console, and the CLI mints only for service
    # accounts (core/identity/tokens.py). Unset: on exactly when OPSGATE_SECRET_KEY is set, which
    # every
    # production deployment must do (docs/console.md); off for `make run` and the tests.
    self_service_tokens: bool | None = None
    # How long a stored idempotent answer is replayed (then `opsgate idempotency prune`).
    idempotency_retention_hours: int = Field(default=24, ge=1, le=24 * 30)
    # Audit records younger than this are never archived (PCI DSS 10.5.1: 12 months, plus a
    # margin); `opsgate audit archive` without --before archives what is older.
    audit_retention_days: int = Field(default=400, ge=366)
    # A key claimed longer ago than this by a request that never finished (its process died)
    # may be taken over by a retry; nothing of that request committed.
    idempotency_lock_timeout_seconds: int = Field(default=300, ge=5, le=3600)
    # How long a write transaction waits for a lock (PostgreSQL `lock_timeout`; SQLite's busy
    # timeout) and runs one statement (PostgreSQL `statement_timeout`). Both stay below the
    # takeover timeout above, so a request stuck behind a locked target gives up first.
    db_lock_timeout_seconds: int = Field(default=30, ge=1, le=3600)
    db_statement_timeout_seconds: int = Field(default=60, ge=1, le=3600)

    # --- audit chain anchors (core/audit/anchoring.py; docs/operations.md) ---
    # Signed heads are appended to `anchors.jsonl` here: a directory on the app host that no
    # database role can write (and that `audit verify` reads).
    audit_anchor_dir: Path = Field(default=Path("audit-anchors"))
    # The Ed25519 private key (PKCS#8 PEM) that signs anchors; generated once when missing.
    audit_anchor_key_file: Path = Field(default=Path(".opsgate-anchor-key"))
    # Public keys (base64, comma-separated) of earlier anchor keys, still trusted by verify
    # after a rotation, or of the signing key on a host that only verifies.
    audit_anchor_trusted_keys: str = ""
    # Each `opsgate serve` process anchors a moved head this often, and as soon as this many
    # records follow the last anchor; 0 turns either off.
    audit_anchor_interval_seconds: int = Field(default=300, ge=0, le=24 * 3600)
    audit_anchor_every_records: int = Field(default=1000, ge=0, le=1_000_000)
    # Mount `/bench/*` endpoints that do the same work as an action with no controls.
    # Only `make bench` sets this; never enable it in production.
    bench_endpoints: bool = False
    # The address operators reach opsgate at (e.g. https://opsgate.example.com): webhook
    # events link to the console with it. Unset: events carry no links.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    # Deliver webhook events from a background thread of each `opsgate serve` process. Off:
    # run `opsgate webhooks deliver` instead (events are queued either way).
    webhook_delivery: bool = True
    # TEST ONLY (core/faults.py): the process SIGKILLs itself at this named point, so that a
    # test can prove what a crash there leaves behind. Never set it in production.
    fault_injection: FaultPoint | None = None

    # --- personal data in record searches (docs/operations.md) ---
    # Keys the hash (HMAC-SHA256) the audit trail keeps of each search term instead of the
    # term. Unset: derived from the newest `secret_key`, so hashes of one term differ before
    # and after a rotation of it; set this to keep them comparable.
    audit_hash_key: SecretStr | None = Field(default=None, min_length=32)
    # Record searches per person within the window, console and API together. Past it:
    # enforce answers 429 limit_exceeded; monitor searches and flags the audit record.
    search_limit_mode: Literal["off", "monitor", "enforce"] = "enforce"
    search_limit_count: int = Field(default=60, ge=1, le=100_000)
    search_limit_window_minutes: int = Field(default=10, ge=1, le=24 * 60)
    # From this many searches that found nothing within the window, each search's audit
    # record is flagged `search_probing`.
    search_flag_misses: int = Field(default=20, ge=1, le=100_000)

    # --- bounded input (docs/operations.md) ---
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
    # How long a step-up grant (`POST /api/v1/auth/step-up`) may be used to approve one
    # money-moving request through the API; capped by the re-authentication window.
    step_up_seconds: int = Field(default=300, ge=30, le=900)
    # Failed sign-ins allowed per username and per address within the window.
    login_max_failures: int = Field(default=5, ge=1, le=100)
    login_window_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Secure cookies: None follows the request's scheme (HTTPS, as uvicorn sees it).
    cookie_secure: bool | None = None
    # Refused authentications (bad or missing token, unknown session) answered 401 per source
    # address and minute; past it, 429 (core/identity/auth_refusals.py). Valid credentials still
    # work.
    auth_refusals_per_minute: int = Field(default=60, ge=1, le=100_000)
    # The proxies (load balancers) whose X-Forwarded-For and X-Forwarded-Proto are believed:
    # comma-separated addresses or networks, or "*" (docs/operations.md). Empty: none, so a
    # client's own X-Forwarded-For never changes the address audited and throttled.
    forwarded_allow_ips: str = Field(default="", pattern=r"^[0-9A-Fa-f.:/*, ]*$")

    # --- single sign-on (OpenID Connect; docs/console.md) ---
    # Unset: single sign-on is off and the sign-in page offers only passwords. Set: the
    # provider's `{issuer}/.well-known/openid-configuration` is read at the first SSO sign-in.
    oidc_issuer: str | None = Field(default=None, min_length=1)
    oidc_client_id: str | None = Field(default=None, min_length=1)
    oidc_client_secret: SecretStr | None = Field(default=None, min_length=1)
    # The ID token claim that lists the person's groups (mapped to roles by the policy's
    # `[identity_provider] group_roles`).
    oidc_groups_claim: str = Field(default="groups", min_length=1)

    @property
    def tokens_are_self_service(self) -> bool:
        """Whether `self_service_tokens` is on, its default resolved."""
        if self.self_service_tokens is not None:
            return self.self_service_tokens
        return self.secret_key is not None

    @model_validator(mode="after")
    def _timeouts_below_takeover(self) -> Settings:
        takeover = self.idempotency_lock_timeout_seconds
        for name in ("db_lock_timeout_seconds", "db_statement_timeout_seconds"):
            if getattr(self, name) >= takeover:
                raise ValueError(
                    f"OPSGATE_{name.upper()} must be below OPSGATE_IDEMPOTENCY_LOCK_TIMEOUT_"
                    f"SECONDS ({takeover}): a request must give up before a retry may take "
                    "its Idempotency-Key over"
                )
        return self

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


class ProductionRefused(Exception):
    """OPSGATE_ENVIRONMENT=production and a setting it needs is missing (the message says
    which)."""


def production_refusals(settings: Settings) -> list[str]:
    """Why this process must not start in production; empty outside production.

    Each item is a per-host or test-only fallback. A generated secret key differs per host, so
    behind a load balancer a session cookie or CSRF token signed by one host is refused by the
    next. A generated anchor key is one nobody trusts elsewhere (`audit verify` on another host
    cannot check its signatures). SQLite is not refused: one host may legitimately run on it."""
    if settings.environment != "production":
        return []
    refusals = []
    if settings.secret_key is None:
        refusals.append(
            "OPSGATE_ENVIRONMENT=production needs OPSGATE_SECRET_KEY (at least 32 characters, "
            "the same on every host): without it each host would generate its own key file "
            f"({settings.secret_key_file}), and console sessions and CSRF tokens would break "
            "across hosts"
        )
    anchoring_on = settings.audit_anchor_interval_seconds or settings.audit_anchor_every_records
    if anchoring_on and not settings.audit_anchor_key_file.exists():
        refusals.append(
            "OPSGATE_ENVIRONMENT=production needs the anchor signing key at "
            f"OPSGATE_AUDIT_ANCHOR_KEY_FILE ({settings.audit_anchor_key_file}), provisioned "
            "(openssl genpkey -algorithm ed25519), not generated on this host"
        )
    if settings.bench_endpoints:
        refusals.append("OPSGATE_BENCH_ENDPOINTS is for `make bench` only, never production")
    if settings.fault_injection is not None:
        refusals.append("OPSGATE_FAULT_INJECTION is for the tests only, never production")
    return refusals


def refuse_unsafe_production(settings: Settings) -> None:
    """Raise ProductionRefused naming every missing setting (nothing outside production)."""
    refusals = production_refusals(settings)
    if refusals:
        raise ProductionRefused("; ".join(refusals))


@cache
def get_settings() -> Settings:
    return Settings()
