"""Tables of the control layer: people, credentials and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from opsgate.db.base import Base, JSONType, UTCDateTime


class User(Base):
    """A person who operates opsgate. Roles come from `user_roles`."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(default=True)
    # A machine (e.g. the Prometheus scraper), not a person: it never signs in to the console,
    # so its API tokens come from the CLI (core/identity/tokens.py `check_cli_issue`).
    is_service_account: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(default=1, server_default="1")

    roles: Mapped[list[UserRole]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    __mapper_args__ = {"version_id_col": version}

    def role_names(self) -> frozenset[str]:
        return frozenset(r.role for r in self.roles)


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(back_populates="roles")


class ApiToken(Base):
    """A bearer credential. Only the SHA-256 of the secret is kept; the secret is shown once.

    Tokens carry 256 random bits, so a fast hash is sufficient (no offline guessing is
    feasible) and keeps lookup to one indexed equality match.
    """

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the secret, for recognising a token in a list.
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # `console` (the person, signed in) or `cli` (someone with shell access; then who, where).
    # Empty on tokens created before this was recorded.
    created_via: Mapped[str | None] = mapped_column(String(16))
    created_os_user: Mapped[str | None] = mapped_column(String(200))
    created_host: Mapped[str | None] = mapped_column(String(255))

    user: Mapped[User] = relationship(lazy="joined")


class AuditRecord(Base):
    """One append-only line of the audit trail: who tried what, on what, and what happened.

    `seq` orders the trail; `id` is the public identifier. Actor name and roles are copied so
    that the record still reads correctly after the user changes or is removed.
    """

    __tablename__ = "audit_records"

    # Assigned by the chain (head.seq + 1) under the chain-head lock, never by the database,
    # so that sequence order is exactly chain order.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(40), unique=True)
    # SHA-256 of the previous record's `hash` and of this record's canonical form.
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    request_id: Mapped[str] = mapped_column(String(128))
    # Set on records of an approved request's execution: its own request ID, and the approval.
    execution_request_id: Mapped[str | None] = mapped_column(String(128))
    approval_id: Mapped[str | None] = mapped_column(String(40))
    actor_id: Mapped[str | None] = mapped_column(String(40))
    actor_name: Mapped[str | None] = mapped_column(String(200))
    actor_roles: Mapped[list[str] | None] = mapped_column(JSONType)
    credential_id: Mapped[str | None] = mapped_column(String(40))
    origin_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(128))
    target: Mapped[str | None] = mapped_column(String(200))
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    reason: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Warnings raised by the control layer, e.g. near-duplicate money movement.
    flags: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    policy_version: Mapped[str | None] = mapped_column(String(64))
    # The W3C trace ID (32 hex) of the request that wrote it; hashed only when set, so the
    # records chained before traces existed keep their hashes.
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # The caller's own X-Request-ID, when it sent a well-formed one (never a key: the
    # request ID is always opsgate's); hashed only when set, like `trace_id`.
    client_request_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_audit_records_request_id", "request_id"),
        Index("ix_audit_records_trace_id", "trace_id"),
        Index("ix_audit_records_execution_request_id", "execution_request_id"),
        Index("ix_audit_records_approval_id", "approval_id", "seq"),
        Index("ix_audit_records_actor_seq", "actor_id", "seq"),
        Index("ix_audit_records_action_seq", "action", "seq"),
        Index("ix_audit_records_target_seq", "target", "seq"),
        Index("ix_audit_records_result_seq", "result", "seq"),
        Index("ix_audit_records_occurred_at", "occurred_at"),
    )


class AuditChainHead(Base):
    """The newest record of the chain (one row). Appends lock it, so the chain never forks,
    and read it, so no append scans the table."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditArchive(Base):
    """A segment of the chain exported to a file and removed from the table. The remaining
    chain starts from `through_hash`."""

    __tablename__ = "audit_archives"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    through_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    through_hash: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(BigInteger)
    file_name: Mapped[str] = mapped_column(String(500))
    file_sha256: Mapped[str] = mapped_column(String(64))
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime())
    archived_by: Mapped[str] = mapped_column(String(200))


class AuditArchivePermit(Base):
    """Present only inside `opsgate audit archive`'s transaction: the append-only triggers let
    a DELETE through while a permit exists, and refuse every UPDATE and DELETE otherwise."""

    __tablename__ = "audit_archive_permits"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)


class ApprovalRequest(Base):
    """An action waiting for (or past) a second person's decision. What is stored is exactly
    what executes: payload, target and the state and policy they were approved against."""

    __tablename__ = "approval_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    action: Mapped[str] = mapped_column(String(128), index=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    payload_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    requester_id: Mapped[str] = mapped_column(String(40), index=True)
    requester_name: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    policy_version: Mapped[str] = mapped_column(String(64))
    target_snapshot: Mapped[dict[str, Any]] = mapped_column(JSONType)
    target_version: Mapped[int] = mapped_column()
    proposed_change: Mapped[dict[str, Any]] = mapped_column(JSONType)
    rule: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Warnings for the reviewer, e.g. near-duplicate requests on the same target.
    flags: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    quorum: Mapped[int] = mapped_column()
    approver_roles: Mapped[list[str]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    executed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    execution_request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    decisions: Mapped[list[ApprovalDecision]] = relationship(
        back_populates="approval", order_by="ApprovalDecision.decided_at", lazy="selectin"
    )


class ApprovalDecision(Base):
    """One person's approve or reject. The unique key makes one person count once."""

    __tablename__ = "approval_decisions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("approval_requests.id"))
    approver_id: Mapped[str] = mapped_column(String(40), index=True)
    approver_name: Mapped[str] = mapped_column(String(200))
    approver_roles: Mapped[list[str]] = mapped_column(JSONType)
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())

    approval: Mapped[ApprovalRequest] = relationship(back_populates="decisions")

    __table_args__ = (UniqueConstraint("approval_id", "approver_id"),)


class ApprovalView(Base):
    """When each reviewer first opened a request (for the rubber-stamp metric)."""

    __tablename__ = "approval_views"

    approval_id: Mapped[str] = mapped_column(ForeignKey("approval_requests.id"), primary_key=True)
    viewer_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    first_viewed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyRecord(Base):
    """The first outcome of a request made with an `Idempotency-Key`, scoped to its actor.

    Claimed (`in_flight`) before the action runs; completed in the same transaction as the
    action's effect, so a stored answer exists exactly when the effect does.
    """

    __tablename__ = "idempotency_records"

    actor_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    action: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    response_status: Mapped[int | None] = mapped_column()
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UsageEvent(Base):
    """One accepted use of an action by an actor (executed, or held for approval), for usage
    limits and cumulative policy conditions (core/actions/aggregates.py)."""

    __tablename__ = "usage_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    actor_id: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(128))
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    request_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    target: Mapped[str | None] = mapped_column(String(200))
    # The `customer:<id>` the target belongs to, when its kind says (TargetKind.customer_of).
    customer: Mapped[str | None] = mapped_column(String(200))
    # Set when the use was held for approval: it counts toward cumulative figures only while
    # that request may still execute or has executed.
    approval_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        Index("ix_usage_events_actor_action_time", "actor_id", "action", "occurred_at"),
        Index("ix_usage_events_target_action_time", "target", "action", "occurred_at"),
        Index("ix_usage_events_customer_action_time", "customer", "action", "occurred_at"),
    )


class UserPassword(Base):
    """A local password as an Argon2id hash (core/identity/passwords.py). People who sign in only
    through single sign-on have none."""

    __tablename__ = "user_passwords"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConsoleSession(Base):
    """A signed-in browser (core/identity/console_sessions.py). Only the SHA-256 of the session's
    secret is kept; the cookie carries the ID and the secret, signed."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # How the person proved who they are: `password`, or `oidc` for single sign-on.
    method: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The last time the person proved who they are (sign-in or re-authentication).
    authenticated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Refreshed at most once a minute; the idle timeout counts from here.
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))


class StepUpGrant(Base):
    """A fresh proof of identity for one money-moving approval through the API
    (core/approvals/step_up.py): bound to its user and the bearer token that asked for it,
    short-lived,
    used at most once. Only the SHA-256 of its secret is kept."""

    __tablename__ = "step_up_grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    credential_id: Mapped[str] = mapped_column(String(40))
    purpose: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The approval request the grant was spent on.
    used_for: Mapped[str | None] = mapped_column(String(40))


class LoginFailure(Base):
    """A failed (or still running) password check, for throttling guesses per username and
    per IP address. Removed for a username when it signs in; the audit trail keeps the rest."""

    __tablename__ = "login_failures"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_login_failures_username_time", "username", "occurred_at"),
        Index("ix_login_failures_ip_time", "ip", "occurred_at"),
    )


class AuthRefusalWindow(Base):
    """Refused authentications from one source address in one minute
    (core/identity/auth_refusals.py):
    counted here instead of one audit record each; `audited` is how many of them audit
    records already account for."""

    __tablename__ = "auth_refusal_windows"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True, index=True)
    refusals: Mapped[int] = mapped_column(Integer)
    audited: Mapped[int] = mapped_column(Integer)


class UserIdentity(Base):
    """A person's account at a single sign-on identity provider: (issuer, subject) names
    the same opsgate user at every sign-in, whatever the provider says their name is."""

    __tablename__ = "user_identities"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_sign_in_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("issuer", "subject"),)


class BackendCall(Base):
    """One call of an action to a remote backend (core/integrations/backends.py), recorded before
    the
    request leaves and settled after: an outcome that cannot be known (a timeout, a crash) is
    `unknown` until `opsgate reconcile` asks the backend with the same idempotency key."""

    __tablename__ = "backend_calls"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    backend: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(200))
    actor_id: Mapped[str | None] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(128))
    execution_request_id: Mapped[str | None] = mapped_column(String(128))
    approval_id: Mapped[str | None] = mapped_column(String(40))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # Derived from the caller's key (or the approval): the same on every retry.
    idempotency_key: Mapped[str] = mapped_column(String(128))
    # pending | succeeded | rejected | unavailable | unknown | not_executed
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    http_status: Mapped[int | None] = mapped_column(Integer)
    # What was sent (payload redacted) and what came back (redacted), for `opsgate trace`.
    request: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_backend_calls_status_started", "status", "started_at"),
        Index("ix_backend_calls_idempotency_key", "idempotency_key"),
        Index("ix_backend_calls_request_id", "request_id"),
        Index("ix_backend_calls_execution_request_id", "execution_request_id"),
    )


class OutboxEvent(Base):
    """A notification to deliver to one webhook subscription, written in the transaction of
    the change it reports (so none is lost or sent for a rolled-back action) and delivered
    after commit, with retries, by core/integrations/webhooks.py."""

    __tablename__ = "outbox_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Shared by the deliveries of one event to several subscriptions (receivers dedupe on it).
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    subscription: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    request_id: Mapped[str | None] = mapped_column(String(128))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # pending | delivered | dead
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set while a deliverer holds the row, so another process skips it until it expires.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_outbox_events_status_next", "status", "next_attempt_at"),
        Index("ix_outbox_events_event_id", "event_id"),
        Index("ix_outbox_events_request_id", "request_id"),
    )
