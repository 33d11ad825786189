"""Settings of the ledger service, read from the environment (prefix `OPSGATE_LEDGER_`)."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from opsgate.core.integrations.signing import MIN_SECRET_LENGTH


class LedgerDatabaseSettings(BaseSettings):
    """What `opsgate demo ledger-service init` needs: no secret, only where the data lives."""

    model_config = SettingsConfigDict(
        env_prefix="OPSGATE_LEDGER_", extra="ignore", env_ignore_empty=True
    )

    database_url: str = Field(default="sqlite:///./ledger.db")
    log_level: str = Field(default="INFO")


class LedgerSettings(LedgerDatabaseSettings):
    """Everything `opsgate demo ledger-service serve` needs. Without a secret it does not start."""

    # Verifies requests and signs answers; opsgate holds the same one (its `secret_env`).
    secret: SecretStr = Field(min_length=MIN_SECRET_LENGTH)
    # The secret before the last rotation: requests it signed are still accepted.
    secret_previous: SecretStr | None = Field(default=None, min_length=MIN_SECRET_LENGTH)

    # Accept legacy v1 signatures (unbound, docs/backends.md) too, for a migration window
    # only: off, a request must be signed v2. A v1 request is answered in v1.
    accept_signature_v1: bool = Field(default=False)

    def verifying_secrets(self) -> tuple[str, ...]:
        """The secrets a request may be signed with: the current one first."""
        previous = self.secret_previous
        current = self.secret.get_secret_value()
        return (current,) if previous is None else (current, previous.get_secret_value())


def settings_error(exc: ValidationError) -> str:
    """A start-up message for invalid settings that names the variables, never their values."""
    return (
        "the ledger service cannot start: OPSGATE_LEDGER_SECRET must hold a secret of at "
        f"least {MIN_SECRET_LENGTH} characters (the one opsgate signs its requests with), and "
        f"OPSGATE_LEDGER_SECRET_PREVIOUS, when set, too.\n{_fields(exc)}"
    )


def _fields(exc: ValidationError) -> str:
    return "\n".join(
        f"  - OPSGATE_LEDGER_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
        for e in exc.errors()
    )
