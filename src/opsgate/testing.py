"""opsgate.testing: a pytest plugin to test a plugin's actions through opsgate's real path.

Installing opsgate registers it (entry point `pytest11`, name `opsgate.testing`); a project
that does not install opsgate as a distribution writes `pytest_plugins = ["opsgate.testing"]`
in its conftest.py. Nothing is mocked: `gate.start` is `Gateway.submit` (policy, validation,
target lock, limits, approval gate, idempotency, handler and audit in one transaction) and
`gate.approve` is `Approvals.decide` (segregation of duties, quorum, step-up, stale check,
controlled execution), on a database migrated by opsgate's own migrations.

    def test_rename_needs_a_second_person(gate):
        ann = gate.user("ann", roles=["support"])
        ben = gate.user("ben", roles=["lead"])
        pending = gate.start(ann, "widget.rename", "widget:w1", {"name": "new"})
        with gate.refused("self_approval"):
            gate.approve(pending.approval_id, ann)
        done = gate.approve(pending.approval_id, ben)
        assert gate.audit(done.execution_request_id)[-1].after == {"name": "new", ...}

Fixtures (override any of them in your conftest.py):
- `opsgate_plugins`: which plugins are enabled, as `OPSGATE_PLUGINS` says it (entry-point
  names or `module:attribute` paths; None: every installed plugin). Default: the variable.
- `opsgate_policy`: the policy file (None: the one the only enabled plugin ships).
- `opsgate_database_url`: a migrated database private to the test. SQLite in the test's
  temporary directory; PostgreSQL when `OPSGATE_TESTING_POSTGRES_URL` names a role that may
  `CREATE DATABASE` (a throwaway database per test, copied from one migrated per session).
- `opsgate_clock`: a clock frozen at the test's start; `gate.clock.advance(...)` moves it.
- `gate`: the `Gate` below, over Services built from all of these.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from opsgate.core.actions.gateway import ActionResult, Replayed
from opsgate.core.actions.registry import RiskClass
from opsgate.core.approvals import step_up
from opsgate.core.approvals.gate import Decision, DecisionResult
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import OpsgateError
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.identity.users import ensure_user
from opsgate.core.request_ids import new_request_id
from opsgate.db.migrate import upgrade
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate.plugin import Plugin
from opsgate.plugins import discover
from opsgate.settings import Settings
from opsgate.web.services import Services

__all__ = ["POSTGRES_URL_VARIABLE", "Gate", "Refusal"]

POSTGRES_URL_VARIABLE = "OPSGATE_TESTING_POSTGRES_URL"
# `gate.start(..., idempotency_key=AUTO)`: a fresh key per call; None sends no key.
AUTO = "auto"


@dataclass
class Refusal:
    """What `gate.refused(code)` caught: the error and the audit record that recorded it."""

    error: OpsgateError | None = None
    audit: AuditRecord | None = None


@dataclass
class Gate:
    """One test's view of opsgate: people, actions started and decided, the audit trail."""

    services: Services
    clock: FrozenClock
    # The request ID of the last call made through this gate (refusals are audited under it).
    last_request_id: str | None = None
    _credentials: dict[str, str] = field(default_factory=dict)

    def user(self, username: str, roles: Sequence[str], name: str | None = None) -> Actor:
        """A person holding `roles` (created when missing), as an authenticated Actor."""
        with self.services.db.writing() as session:
            row = ensure_user(
                session, username, name or username, tuple(roles), now=self.clock.now()
            )
            session.commit()
            actor = Actor(id=row.id, name=row.display_name, roles=row.role_names())
        credential = self._credentials.setdefault(username, f"tok_testing_{secrets.token_hex(6)}")
        return replace(actor, credential_id=credential)

    def start(
        self,
        actor: Actor,
        action: str,
        target: str,
        payload: Mapping[str, Any] | None = None,
        reason: str = "opsgate.testing",
        *,
        idempotency_key: str | None = AUTO,
    ) -> ActionResult | Replayed:
        """Submit `action` as `actor` through the gateway: executed, pending approval, or the
        refusal raised (an OpsgateError whose `.code` is the problem code)."""
        body = {"target": target, "payload": dict(payload or {}), "reason": reason}
        key = f"idk-{secrets.token_hex(8)}" if idempotency_key == AUTO else idempotency_key
        return self.services.gateway.submit(actor, action, body, self._origin(), key)

    def approve(
        self, approval_id: str | None, actor: Actor, comment: str = "ok", *, step_up: bool = True
    ) -> DecisionResult:
        """Approve as `actor` through `Approvals.decide`; on quorum the action executes. A
        money-moving request gets a fresh step-up grant first, as the API's caller would
        (`step_up=False`: none, to test that refusal)."""
        assert approval_id is not None, "this action did not wait for approval"
        grant = self._step_up(approval_id, actor) if step_up else None
        return self.services.approvals.decide(
            approval_id, actor, Decision.APPROVE, comment, self._origin(), step_up=grant
        )

    def reject(self, approval_id: str | None, actor: Actor, comment: str) -> DecisionResult:
        """Reject as `actor` (a rejection needs a comment)."""
        assert approval_id is not None, "this action did not wait for approval"
        return self.services.approvals.decide(
            approval_id, actor, Decision.REJECT, comment, self._origin()
        )

    def audit(
        self, request_id: str | None = None, *, approval_id: str | None = None
    ) -> list[AuditRecord]:
        """The audit records of a request ID (or of execution request ID) and/or an approval,
        in chain order. Read `action`, `result`, `actor_name`, `target`, `before`, `after`,
        `parameters`, `outcome`, `error_code`, `request_id`, `approval_id`."""
        query = select(AuditRecord).order_by(AuditRecord.seq)
        if request_id is not None:
            query = query.where(
                (AuditRecord.request_id == request_id)
                | (AuditRecord.execution_request_id == request_id)
            )
        if approval_id is not None:
            query = query.where(AuditRecord.approval_id == approval_id)
        with self.services.db.reading() as session:
            return list(session.scalars(query))

    def approval(self, approval_id: str | None) -> ApprovalRequest:
        """The stored approval request (status, payload, target snapshot, proposed change)."""
        with self.services.db.reading() as session:
            row = session.get(ApprovalRequest, approval_id)
        assert row is not None, f"no approval request {approval_id!r}"
        return row

    @contextmanager
    def refused(self, code: str) -> Iterator[Refusal]:
        """Assert the block raises the refusal `code` (e.g. "self_approval") and that it
        was audited with that code under the call's request ID (or, for an approved request
        that could not execute, under its execution request ID)."""
        caught = Refusal()
        with pytest.raises(OpsgateError) as info:
            yield caught
        caught.error = info.value
        assert info.value.code == code, f"refused with {info.value.code.value!r}, not {code!r}"
        # A refused execution is recorded under its own execution request ID.
        request_id = info.value.extra.get("execution_request_id") or self.last_request_id
        records = [r for r in self.audit(request_id) if r.error_code == code]
        assert records, f"the {code!r} refusal left no audit record"
        caught.audit = records[-1]

    def _origin(self) -> Origin:
        self.last_request_id = new_request_id()
        return Origin(request_id=self.last_request_id, ip="127.0.0.1", user_agent="opsgate.testing")

    def _step_up(self, approval_id: str, actor: Actor) -> str | None:
        with self.services.db.reading() as session:
            row = session.get(ApprovalRequest, approval_id)
        spec = self.services.registry.get(row.action) if row is not None else None
        if spec is None or spec.risk != RiskClass.MONEY_MOVING:
            return None
        with self.services.db.writing() as session:
            issued = step_up.issue(session, actor, now=self.clock.now(), ttl=timedelta(minutes=5))
            session.commit()
        return issued.secret


# --- databases -------------------------------------------------------------------------------


def _admin(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg(url: str, sql: str) -> None:
    with psycopg.connect(_admin(url), autocommit=True) as conn:
        conn.execute(sql.encode())


def _pg_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@dataclass
class _Templates:
    """Databases migrated once per session, copied for each test."""

    tmp: pytest.TempPathFactory
    run: str = field(default_factory=lambda: secrets.token_hex(4))
    # One template per choice of plugins (their tables come from their own migrations).
    sqlite: dict[str | None, Path] = field(default_factory=dict)
    postgres: dict[str | None, str] = field(default_factory=dict)

    def sqlite_copy(self, directory: Path, plugins: str | None) -> str:
        if plugins not in self.sqlite:
            template = self.tmp.mktemp("opsgate-template") / "template.db"
            upgrade(f"sqlite:///{template}", plugins=_migrated(plugins))
            self.sqlite[plugins] = template
        path = directory / "opsgate.db"
        shutil.copyfile(self.sqlite[plugins], path)
        return f"sqlite:///{path}"

    def postgres_template(self, url: str, plugins: str | None) -> str:
        if plugins not in self.postgres:
            name = f"opsgate_testing_{self.run}_template{len(self.postgres)}"
            _pg(url, f'CREATE DATABASE "{name}"')
            upgrade(_pg_database(url, name), plugins=_migrated(plugins))
            self.postgres[plugins] = name
        return self.postgres[plugins]


def _migrated(plugins: str | None) -> list[Plugin]:
    return [enabled.plugin for enabled in discover(plugins)]


@pytest.fixture(scope="session")
def _opsgate_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    templates = _Templates(tmp_path_factory)
    yield templates
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if url:
        for name in templates.postgres.values():
            _pg(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def opsgate_database_url(
    _opsgate_templates: _Templates, tmp_path: Path, opsgate_plugins: str | None
) -> Iterator[str]:
    """A database migrated by opsgate's migrations and the enabled plugins' own, private to
    this test."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        yield _opsgate_templates.sqlite_copy(tmp_path, opsgate_plugins)
        return
    template = _opsgate_templates.postgres_template(url, opsgate_plugins)
    name = f"opsgate_testing_{_opsgate_templates.run}_{secrets.token_hex(4)}"
    _pg(url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _pg_database(url, name)
    finally:
        _pg(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def opsgate_plugins() -> str | None:
    """The enabled plugins, as OPSGATE_PLUGINS says (None: every installed plugin)."""
    return os.environ.get("OPSGATE_PLUGINS")


@pytest.fixture
def opsgate_policy() -> Path | None:
    """The policy file (None: the one the only enabled plugin ships, else opsgate's own)."""
    value = os.environ.get("OPSGATE_POLICY")
    return Path(value) if value else None


@pytest.fixture
def opsgate_clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))


@pytest.fixture
def gate(
    opsgate_database_url: str,
    opsgate_plugins: str | None,
    opsgate_policy: Path | None,
    opsgate_clock: FrozenClock,
    tmp_path: Path,
) -> Iterator[Gate]:
    """Services built as `opsgate serve` builds them, with the chosen plugins and policy."""
    settings = Settings(
        database_url=opsgate_database_url,
        plugins=opsgate_plugins,
        policy=opsgate_policy,
        integrations=None,
        audit_anchor_dir=tmp_path / "anchors",
        audit_anchor_key_file=tmp_path / "anchor-key.pem",
    )
    services = Services.build(settings, clock=opsgate_clock)
    try:
        yield Gate(services, opsgate_clock)
    finally:
        services.db.dispose()
