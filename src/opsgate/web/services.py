"""Everything a request handler needs, built once per process at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from opsgate.core.clock import Clock, SystemClock
from opsgate.core.gateway import Gateway
from opsgate.core.policy import Policy, load_policy
from opsgate.core.registry import Registry
from opsgate.db.engine import Database
from opsgate.domain.catalog import build_registry
from opsgate.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    registry: Registry
    policy: Policy
    clock: Clock
    gateway: Gateway

    @classmethod
    def build(cls, settings: Settings, *, clock: Clock | None = None) -> Services:
        """Load and validate the policy, open the database; raise PolicyError on a bad policy."""
        registry = build_registry()
        policy = load_policy(settings.policy, registry)
        db = Database(settings.database_url)
        clock = clock or SystemClock()
        gateway = Gateway(db, registry, policy, clock)
        return cls(settings, db, registry, policy, clock, gateway)
