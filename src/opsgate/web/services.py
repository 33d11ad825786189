"""Everything a request handler needs, built once per process at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

from opsgate import __version__
from opsgate.core.actions.gateway import Gateway
from opsgate.core.actions.idempotency import Idempotency
from opsgate.core.actions.policy import Capability, Policy, load_policy
from opsgate.core.actions.registry import Registry
from opsgate.core.approvals.gate import Approvals
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.clock import Clock, SystemClock
from opsgate.core.errors import Forbidden
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.integrations.config import NO_INTEGRATIONS, Integrations
from opsgate.core.request_ids import new_request_id
from opsgate.core.tracing import new_trace_id
from opsgate.db.engine import Database
from opsgate.plugins import Enabled, load_setup
from opsgate.settings import Settings
from opsgate.web.records import Catalogue, catalogue


@dataclass
class Services:
    settings: Settings
    db: Database
    registry: Registry
    policy: Policy
    clock: Clock
    gateway: Gateway
    approvals: Approvals
    integrations: Integrations = NO_INTEGRATIONS
    plugins: tuple[Enabled, ...] = ()
    # The plugins' search providers and record views (web/records.py).
    records: Catalogue = field(default_factory=Catalogue)

    @classmethod
    def build(
        cls, settings: Settings, *, clock: Clock | None = None, maintenance: bool = False
    ) -> Services:
        """Load and validate the policy and the integrations, open the database; raise
        PolicyError, IntegrationsError or PluginError naming every problem. Write transactions are
        bounded by the database timeouts, except for `maintenance` (bulk deletes by the CLI)."""
        setup = load_setup(
            settings.plugins, settings.policy, settings.integrations, settings.declarations
        )
        registry = setup.registry
        policy = load_policy(setup.policy, registry)
        integrations = setup.load_integrations()
        if maintenance:
            db = Database(settings.database_url)
        else:
            db = Database(
                settings.database_url,
                lock_timeout=timedelta(seconds=settings.db_lock_timeout_seconds),
                statement_timeout=timedelta(seconds=settings.db_statement_timeout_seconds),
            )
        clock = clock or SystemClock()
        idempotency = Idempotency(
            db,
            retention=timedelta(hours=settings.idempotency_retention_hours),
            lock_timeout=timedelta(seconds=settings.idempotency_lock_timeout_seconds),
        )
        gateway = Gateway(db, registry, policy, clock, idempotency, integrations)
        approvals = Approvals(
            gateway,
            reauth_after=timedelta(minutes=settings.console_reauth_minutes),
            fault=settings.fault_injection,
        )
        return cls(
            settings,
            db,
            registry,
            policy,
            clock,
            gateway,
            approvals,
            integrations,
            setup.plugins,
            catalogue(setup.plugins, registry),
        )

    def record_startup(self) -> None:
        """Audit that this process started and which policy it loaded (PCI DSS 10.2.1.6)."""
        origin = Origin(
            request_id=new_request_id(),
            ip=None,
            user_agent=f"opsgate/{__version__}",
            trace_id=new_trace_id(),
        )
        entry = AuditEntry(
            action="system.start",
            result=AuditResult.SUCCEEDED,
            parameters={
                "pid": os.getpid(),
                "version": __version__,
                "policy_source": self.policy.source,
                "database": self.db.dialect,
            },
        )
        with self.db.writing() as session:
            self.gateway.write_audit(session, entry, None, origin, self.clock.now())
            session.commit()

    def require(self, actor: Actor, capability: Capability, origin: Origin) -> None:
        """Raise Forbidden (audited) unless `actor` holds `capability`."""
        if not self.policy.has(actor.roles, capability):
            self.gateway.refuse(
                Forbidden(f"Your roles do not include {capability}."),
                AuditEntry(action=str(capability), result=AuditResult.DENIED),
                actor,
                origin,
            )
