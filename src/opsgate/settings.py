"""Process settings, read once from the environment (prefix `OPSGATE_`)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_POLICY = Path(__file__).parent / "domain" / "policy.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSGATE_", extra="ignore")

    database_url: str = Field(default="sqlite:///./opsgate.db")
    policy: Path = Field(default=DEMO_POLICY)
    log_level: str = Field(default="INFO")
    # JSON lines for machines; `console` renders them for a human at a terminal.
    log_format: str = Field(default="json", pattern="^(json|console)$")
    token_default_ttl_days: int = Field(default=30, ge=1, le=365)
    # How long a stored idempotent answer is replayed (then `opsgate idempotency prune`).
    idempotency_retention_hours: int = Field(default=24, ge=1, le=24 * 30)
    # A key claimed longer ago than this by a request that never finished (its process died)
    # may be taken over by a retry; nothing of that request committed.
    idempotency_lock_timeout_seconds: int = Field(default=300, ge=5, le=3600)
    # Mount `/bench/*` endpoints that do the same work as an action with no controls.
    # Only `make bench` sets this; never enable it in production.
    bench_endpoints: bool = False


@cache
def get_settings() -> Settings:
    return Settings()
