"""`opsgate`: serve, migrate, seed, manage users and tokens, check the policy."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import opsgate
from opsgate.core.actions.policy import PolicyError, load_policy
from opsgate.core.actions.registry import Registry
from opsgate.core.audit import anchoring, trace_report
from opsgate.core.audit import chain as audit_chain
from opsgate.core.audit import files as audit_files
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.audit.search import AuditFilter, filtered
from opsgate.core.clock import SystemClock, as_utc
from opsgate.core.errors import NotFound
from opsgate.core.identity import console_sessions, passwords
from opsgate.core.identity import tokens as token_service
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.identity.users import ensure_user, find_user
from opsgate.core.integrations.config import IntegrationsError
from opsgate.core.request_ids import new_request_id
from opsgate.core.tracing import continue_or_start
from opsgate.db import migrate
from opsgate.db.engine import Database
from opsgate.db.models import User
from opsgate.declarations import DeclarationsError
from opsgate.plugins import PluginError, Setup, load_setup
from opsgate.scaffold import plugin_package
from opsgate.settings import ProductionRefused, get_settings, refuse_unsafe_production

app = typer.Typer(
    help="opsgate: the internal control layer for fintech operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Operators and their roles.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
policy_app = typer.Typer(help="The policy file.", no_args_is_help=True)
approvals_app = typer.Typer(help="Approval requests.", no_args_is_help=True)
idempotency_app = typer.Typer(help="Stored idempotent answers.", no_args_is_help=True)
webhooks_app = typer.Typer(
    help="Webhook notifications: deliver, list, retry dead letters.", no_args_is_help=True
)
audit_app = typer.Typer(
    help="The audit trail: verify, checkpoint, export, archive.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(policy_app, name="policy")
app.add_typer(approvals_app, name="approvals")
app.add_typer(idempotency_app, name="idempotency")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
plugins_app = typer.Typer(help="Plugins: what each contributes.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
new_app = typer.Typer(help="Start something new from a template.", no_args_is_help=True)
app.add_typer(new_app, name="new")

err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        try:
            installed = version("opsgate")
        except PackageNotFoundError:  # run from a source tree that was never installed
            installed = opsgate.__version__
        print(f"opsgate {installed}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed opsgate version and exit.",
        ),
    ] = False,
) -> None:
    """opsgate: the internal control layer for fintech operations."""


# Set only by `opsgate demo seed --demo-passwords` (make run); never by default.
DEMO_PASSWORD = "opsgate-demo-password"  # noqa: S105
_DURATION = re.compile(r"^(\d+)([mhd])$")


def _cli_actor() -> Actor:
    # Commands run by someone with shell access to the server; the OS user is the best
    # identity available, and it is copied into the audit record.
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Actor(id=f"cli:{name}", name=f"{name} (cli)", roles=frozenset())


def _cli_origin() -> Origin:
    # Each command's records get a trace ID: the one TRACEPARENT names when a traced job runs
    # the command, else a new one.
    trace = continue_or_start(os.environ.get("TRACEPARENT"))
    return Origin(
        request_id=new_request_id(), ip=None, user_agent="opsgate-cli", trace_id=trace.trace_id
    )


def _user_or_exit(session: Session, username: str, *, active: bool = False) -> User:
    """The user named `username` (active, if asked), or exit 1 saying there is none."""
    user = find_user(session, username)
    if user is None or (active and not user.is_active):
        err.print(f"[red]no {'active ' if active else ''}user {username}[/red]")
        raise typer.Exit(1)
    return user


def table_console() -> Console:
    """Tables for a terminal fit it; piped or captured, they are never cut short with '…'."""
    return Console() if sys.stdout.isatty() else Console(width=240)


def _setup() -> Setup:
    """The plugins, registry and files this process runs with; exit 2 naming the problem."""
    settings = get_settings()
    try:
        return load_setup(
            settings.plugins, settings.policy, settings.integrations, settings.declarations
        )
    except (PluginError, DeclarationsError) as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc


def build_registry() -> Registry:
    return _setup().registry


def _database() -> Database:
    return Database(get_settings().database_url)


def _refuse(exc: audit_chain.RecordBeyondHead) -> NoReturn:
    err.print(f"refused: {exc}", style="red", markup=False)
    raise typer.Exit(2)


def _refuse_unsafe_production() -> None:
    """Exit 2 naming each missing setting when production mode lacks one (settings.py)."""
    try:
        refuse_unsafe_production(get_settings())
    except ProductionRefused as exc:
        err.print(f"refused: {exc}", style="red", markup=False)
        raise typer.Exit(2) from exc


def _refuse_if_beyond_head() -> None:
    """Exit 2 with the planted record's name when nothing could be recorded (what every
    audited write would otherwise meet as a failed append)."""
    db = _database()
    try:
        with db.reading() as session:
            found = audit_chain.beyond_head(session)
    except DBAPIError as exc:
        err.print(
            f"cannot read the audit chain ({exc.orig}); is the database migrated "
            "(opsgate db upgrade)?",
            style="red",
            markup=False,
        )
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    if found is not None:
        _refuse(found)


def _refuse_if_schema_behind(setup: Setup) -> None:
    """Exit 2 naming each history (opsgate's, an enabled plugin's) not at its head: serving
    a plugin whose tables were never migrated would fail every one of its actions."""
    try:
        states = migrate.status(get_settings().database_url, [e.plugin for e in setup.plugins])
    except migrate.PluginMigrationError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    except DBAPIError as exc:
        err.print(f"cannot read the schema's revisions ({exc.orig})", style="red", markup=False)
        raise typer.Exit(2) from exc
    behind = [s for s in states if not s.at_head]
    for state in behind:
        current = ", ".join(state.current) or "none"
        err.print(
            f"refused: the {state.owner} schema is at {current}, not at its head "
            f"{', '.join(state.heads)}: run opsgate db upgrade",
            style="red",
            markup=False,
        )
    if behind:
        raise typer.Exit(2)


def _policy_version() -> str | None:
    try:
        return load_policy(_setup().policy, _setup().registry).version
    except PolicyError:
        return None


def _parse_duration(value: str) -> timedelta:
    match = _DURATION.match(value.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit: 30m, 12h or 90d")
    amount, unit = int(match.group(1)), match.group(2)
    delta = {
        "m": timedelta(minutes=amount),
        "h": timedelta(hours=amount),
        "d": timedelta(days=amount),
    }[unit]
    if not timedelta(minutes=1) <= delta <= timedelta(days=365):
        raise typer.BadParameter("between 1m and 365d")
    return delta


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies whose X-Forwarded-For/-Proto are trusted: addresses or networks, "
            "comma-separated, or '*'. Default: OPSGATE_FORWARDED_ALLOW_IPS, else none.",
        ),
    ] = None,
) -> None:
    """Serve the API (and console) with uvicorn."""
    import uvicorn

    settings = get_settings()
    trusted = (
        settings.forwarded_allow_ips if forwarded_allow_ips is None else forwarded_allow_ips
    ).strip()
    if not re.fullmatch(r"[0-9A-Fa-f.:/*, ]*", trusted):
        raise typer.BadParameter("addresses or networks, comma-separated, or '*'")
    _refuse_unsafe_production()
    try:
        setup = _setup()
        load_policy(setup.policy, setup.registry)
        # Checked here too, so a bad file (say, a plain http:// backend) is one clear message.
        setup.load_integrations()
    except (PolicyError, IntegrationsError) as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    _refuse_if_schema_behind(setup)
    _refuse_if_beyond_head()
    uvicorn.run(
        "opsgate.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level=settings.log_level.lower(),
        # Without a trusted proxy, the forwarded headers are ignored (uvicorn would otherwise
        # believe any caller on 127.0.0.1, and FORWARDED_ALLOW_IPS from the environment).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        # An idle keep-alive connection is closed after this; bodies have their own read
        # deadline (web/bounded_input.py); with h11, an unfinished header block is bounded.
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        h11_max_incomplete_event_size=64 * 1024,
    )


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument()] = "head",
    plugin: Annotated[
        str | None,
        typer.Option(help="Migrate only this enabled plugin's tables, to REVISION of its history."),
    ] = None,
) -> None:
    """Migrate the database to the latest schema, as its owner (OPSGATE_MIGRATION_DATABASE_URL,
    else OPSGATE_DATABASE_URL): opsgate's tables, then each enabled plugin's from its own
    migrations (a REVISION other than head moves opsgate's only). On PostgreSQL, when the app's
    URL names another role, that role is created if missing and granted row rights only
    (docs/operations.md)."""
    settings = get_settings()
    owner_url = settings.migration_database_url or settings.database_url
    enabled = [item.plugin for item in _setup().plugins]
    try:
        if plugin is not None:
            chosen = [p for p in enabled if p.name == plugin]
            if not chosen:
                err.print(f"no enabled plugin {plugin}", style="red", markup=False)
                raise typer.Exit(2)
            migrate.upgrade_plugin(owner_url, chosen[0], revision)
            err.print(f"plugin {plugin}: migrated to {revision}", markup=False)
        else:
            migrate.upgrade(owner_url, revision, plugins=enabled if revision == "head" else ())
            err.print(f"database migrated to {revision}")
            for item in migrate.migrated_plugins(enabled if revision == "head" else ()):
                err.print(f"plugin {item.name}: migrated to head", markup=False)
    except migrate.PluginMigrationError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    role = migrate.grant_app_role(owner_url, settings.database_url)
    if role is not None:
        err.print(f"app role {role}: row rights granted (no UPDATE on audit_records)")
    elif migrate.role_of(owner_url) is not None:
        err.print(
            "warning: the app connects as the owner, which can switch the audit trail's "
            "triggers off; set OPSGATE_MIGRATION_DATABASE_URL to the owner and "
            "OPSGATE_DATABASE_URL to a role that owns nothing",
            style="yellow",
            markup=False,
        )


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the revision does.")],
    plugin: Annotated[
        str | None, typer.Option(help="Write it into this enabled plugin's own history.")
    ] = None,
    autogenerate: Annotated[
        bool, typer.Option(help="Compare the models with the database (as the owner).")
    ] = False,
) -> None:
    """Write a new revision file: into opsgate's history, or into a plugin's own
    (`<migrations>/versions`), so that a plugin's author never writes an Alembic env."""
    settings = get_settings()
    owner_url = settings.migration_database_url or settings.database_url
    config = migrate.alembic_config(owner_url)
    if plugin is not None:
        chosen = [item.plugin for item in _setup().plugins if item.plugin.name == plugin]
        if not chosen:
            err.print(f"no enabled plugin {plugin}", style="red", markup=False)
            raise typer.Exit(2)
        try:
            config = migrate.plugin_config(owner_url, chosen[0])
        except migrate.PluginMigrationError as exc:
            err.print(str(exc), style="red", markup=False)
            raise typer.Exit(2) from exc
    from alembic import command

    script = command.revision(config, message=message, autogenerate=autogenerate)
    scripts = script if isinstance(script, list) else [script]
    for item in scripts:
        if item is not None:
            err.print(f"wrote {item.path}", markup=False)


@db_app.command("current")
def db_current(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Where opsgate's schema and each enabled plugin's stand: revision and head. Exits 1
    when any is behind its head (run `opsgate db upgrade`)."""
    settings = get_settings()
    enabled = [item.plugin for item in _setup().plugins]
    try:
        states = migrate.status(settings.migration_database_url or settings.database_url, enabled)
    except migrate.PluginMigrationError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    if as_json:
        rows = [
            {
                "owner": s.owner,
                "version_table": s.version_table,
                "current": list(s.current),
                "heads": list(s.heads),
                "at_head": s.at_head,
            }
            for s in states
        ]
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table("schema", "version table", "current", "head", "")
        for s in states:
            current = ", ".join(s.current) or "(none)"
            table.add_row(
                s.owner,
                s.version_table,
                current,
                ", ".join(s.heads),
                "ok" if s.at_head else "behind",
            )
        Console().print(table)
    if not all(s.at_head for s in states):
        raise typer.Exit(1)


@users_app.command("create")
def users_create(
    username: str,
    role: Annotated[list[str], typer.Option("--role", help="A role from the policy; repeatable.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    service_account: Annotated[
        bool,
        typer.Option(
            "--service-account",
            help="A machine (e.g. a metrics scraper), not a person: it gets API tokens from "
            "the CLI and never signs in to the console.",
        ),
    ] = False,
) -> None:
    """Create an operator (or a service account) with one or more roles."""
    policy = load_policy(_setup().policy, _setup().registry)
    unknown = sorted(set(role) - set(policy.roles()))
    if unknown:
        raise typer.BadParameter(
            f"unknown role(s) {', '.join(unknown)}; known: {', '.join(policy.roles())}",
            param_hint="--role",
        )
    db = _database()
    now = SystemClock().now()
    with db.writing() as session:
        if find_user(session, username) is not None:
            err.print(f"[red]user {username} already exists[/red]")
            raise typer.Exit(1)
        try:
            user = ensure_user(
                session,
                username,
                name or username,
                tuple(role),
                now=now,
                service_account=service_account,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="USERNAME") from exc
        _audit_credential(
            session,
            "user.create",
            user.id,
            None,
            {"roles": sorted(role), "service_account": service_account},
        )
        session.commit()
        typer.echo(user.id)
    db.dispose()


def _read_new_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != first:
        err.print("[red]the two passwords differ; nothing changed[/red]")
        raise typer.Exit(1)
    return first


@users_app.command("set-password")
def users_set_password(
    username: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Set USERNAME's console password (prompted twice, or one line of standard input). Ends
    their open console sessions."""
    password = _read_new_password(password_stdin)
    db = _database()
    now = SystemClock().now()
    with db.writing() as session:
        user = _user_or_exit(session, username)
        if user.is_service_account:
            err.print(f"[red]{username} is a service account: it never signs in[/red]")
            raise typer.Exit(1)
        try:
            passwords.set_password(session, user, password, now=now)
        except passwords.WeakPassword as exc:
            err.print(f"[red]{exc}; nothing changed[/red]")
            raise typer.Exit(1) from exc
        ended = console_sessions.end_user_sessions(
            session, user.id, console_sessions.SessionEnd.PASSWORD_CHANGED, now=now
        )
        _audit_credential(session, "user.set_password", user.id, None, {"sessions_ended": ended})
        session.commit()
    db.dispose()
    err.print(f"password set for {username}; {ended} console session(s) ended")


@users_app.command("sign-out")
def users_sign_out(username: str) -> None:
    """End every open console session of USERNAME at once (audited)."""
    db = _database()
    now = SystemClock().now()
    with db.writing() as session:
        user = _user_or_exit(session, username)
        ended = console_sessions.end_user_sessions(
            session, user.id, console_sessions.SessionEnd.REVOKED, now=now
        )
        _audit_credential(session, "user.sign_out", user.id, None, {"sessions_ended": ended})
        session.commit()
    db.dispose()
    err.print(f"{ended} console session(s) of {username} ended")


def _minter() -> token_service.Minter:
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):
        os_user = "unknown"
    # getpass.getuser() believes $LOGNAME/$USER first; when the process's real account says
    # otherwise, both are kept, so a borrowed name shows.
    try:
        import pwd

        account = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        account = os_user
    if account != os_user:
        os_user = f"{os_user} (uid {os.getuid()}: {account})"
    return token_service.Minter(
        token_service.TokenSource.CLI, os_user=os_user, host=socket.gethostname()
    )


@tokens_app.command("create")
def tokens_create(
    username: str,
    expires_in: Annotated[str | None, typer.Option(help="Lifetime: 30m, 12h, 90d.")] = None,
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
) -> None:
    """Issue an API token for USERNAME. The token is the last line of output, shown once.

    With self-service tokens on (OPSGATE_SELF_SERVICE_TOKENS), only for a service account:
    people create their own in the console. Always audited with the OS user and host, and
    announced to the token's owner."""
    settings = get_settings()
    ttl = (
        _parse_duration(expires_in)
        if expires_in
        else timedelta(days=settings.token_default_ttl_days)
    )
    setup = _setup()
    registry = setup.registry
    policy = load_policy(setup.policy, registry)
    integrations = setup.load_integrations()
    minter = _minter()
    db = _database()
    now = SystemClock().now()
    with db.writing() as session:
        user = _user_or_exit(session, username, active=True)
        roles = user.role_names()
        try:
            token_service.check_cli_issue(
                user,
                self_service=settings.tokens_are_self_service,
                approves=any(policy.may_approve(roles, action) for action in registry.names()),
            )
        except token_service.CliTokenRefused as exc:
            _audit_credential(
                session,
                "token.create",
                user.id,
                None,
                {"os_user": minter.os_user, "host": minter.host},
                refusal=exc,
            )
            session.commit()
            db.dispose()
            err.print(exc.message, style="red", markup=False)
            raise typer.Exit(1) from exc
        token = token_service.create_token(
            session,
            user,
            name=name,
            ttl=ttl,
            minter=minter,
            actor=_cli_actor(),
            origin=_cli_origin(),
            integrations=integrations,
            policy_version=policy.version,
            now=now,
        )
        session.commit()
    db.dispose()
    err.print(f"token {token.id} for {username}, expires {token.expires_at.isoformat()}")
    typer.echo(token.secret)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens.")] = None,
) -> None:
    """List API tokens (never their secrets): owner, name, how and where each was created,
    expiry, last use and revocation."""
    db = _database()
    now = SystemClock().now()
    with db.reading() as session:
        owner = _user_or_exit(session, user) if user else None
        rows = token_service.tokens_of(session, owner.id if owner else None)
        table = Table(title="API tokens", show_lines=False)
        for column in (
            "id",
            "user",
            "name",
            "hint",
            "created",
            "by",
            "expires",
            "last used",
            "state",
        ):
            table.add_column(column)
        for row in rows:
            by = row.created_via or "?"
            if row.created_via == token_service.TokenSource.CLI:
                by = f"cli: {row.created_os_user}@{row.created_host}"
            state = (
                "revoked" if row.revoked_at else "expired" if row.expires_at <= now else "active"
            )
            table.add_row(
                row.id,
                row.user.username,
                row.name,
                row.hint + "…",
                row.created_at.isoformat(timespec="seconds"),
                by,
                row.expires_at.isoformat(timespec="seconds"),
                row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never",
                state,
            )
    db.dispose()
    table_console().print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by its ID (tok_…); effective on the next request."""
    db = _database()
    now = SystemClock().now()
    with db.writing() as session:
        try:
            token = token_service.revoke_token(session, token_id, now=now)
        except NotFound as exc:
            err.print(exc.detail, style="red", markup=False)
            raise typer.Exit(1) from exc
        _audit_credential(session, "token.revoke", token.user_id, token.id)
        session.commit()
    db.dispose()
    err.print(f"token {token_id} revoked")


@policy_app.command("check")
def policy_check(
    file: Annotated[
        Path | None, typer.Argument(help="Policy file (default: OPSGATE_POLICY).")
    ] = None,
) -> None:
    """Validate a policy file against the registered actions; print its version."""
    setup = _setup()
    path = file or setup.policy
    try:
        policy = load_policy(path, setup.registry)
    except PolicyError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(1) from exc
    typer.echo(f"policy {path} is valid; version {policy.version}")


@approvals_app.command("expire")
def approvals_expire() -> None:
    """Expire every pending or approved request past its expiry (audited). Run from cron."""
    from opsgate.web.services import Services

    services = Services.build(get_settings())
    origin = _cli_origin()
    expired = services.approvals.expire_due(origin)
    services.db.dispose()
    for approval_id in expired:
        typer.echo(approval_id)
    err.print(f"{len(expired)} request(s) expired")


@approvals_app.command("recover")
def approvals_recover(
    older_than: Annotated[
        int, typer.Option(min=0, help="Only requests approved at least this many seconds ago.")
    ] = 60,
) -> None:
    """Execute (or expire) requests an older opsgate left `approved` when it died before
    executing them; each runs once, with every re-check. Safe to run from several hosts."""
    from opsgate.web.services import Services

    services = Services.build(get_settings())
    approved_before = services.clock.now() - timedelta(seconds=older_than)
    handled = services.approvals.recover(_cli_origin(), approved_before=approved_before)
    services.db.dispose()
    for approval_id, status in handled:
        typer.echo(f"{approval_id} {status}")
    err.print(f"{len(handled)} stranded request(s) recovered")


@idempotency_app.command("prune")
def idempotency_prune() -> None:
    """Delete stored answers past their retention (OPSGATE_IDEMPOTENCY_RETENTION_HOURS)."""
    from opsgate.web.services import Services

    services = Services.build(get_settings(), maintenance=True)
    removed = services.gateway.idempotency.prune(services.clock.now())
    services.db.dispose()
    err.print(f"{removed} stored answer(s) pruned")


@app.command()
def reconcile(
    pending_after: Annotated[
        str, typer.Option(help="Treat calls pending this long as abandoned (e.g. 5m)")
    ] = "5m",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per call")] = False,
) -> None:
    """Ask remote backends what became of calls whose outcome is unknown (audited).

    Run it from cron or a timer, e.g. every minute; it is safe to run from several hosts.
    Exits 1 while some calls remain unknown."""
    from opsgate.core.integrations.reconcile import reconcile as run_reconcile
    from opsgate.web.services import Services

    services = Services.build(get_settings())
    try:
        found = run_reconcile(services.gateway, pending_after=_parse_duration(pending_after))
    finally:
        services.gateway.backends.close()
        services.db.dispose()
    if as_json:
        for settlement in found:
            typer.echo(json.dumps(settlement.as_dict()))
    else:
        table = Table("call", "request ID", "action", "target", "was", "now", "note")
        for s in found:
            table.add_row(s.call_id, s.request_id, s.action, s.target, s.was, s.status, s.note)
        if found:
            table_console().print(table)
    open_calls = [s for s in found if not s.settled]
    err.print(f"{len(found) - len(open_calls)} call(s) settled, {len(open_calls)} still unknown")
    if open_calls:
        raise typer.Exit(1)


def _progress(total: int, label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=total == 0,
    )


def _record_cli_read(db: Database, action: str, params: dict[str, object]) -> None:
    with db.writing() as session:
        record(
            session,
            AuditEntry(action=action, result=AuditResult.SUCCEEDED, parameters=params),
            actor=_cli_actor(),
            origin=_cli_origin(),
            policy_version=_policy_version(),
            now=SystemClock().now(),
        )
        session.commit()


@audit_app.command("verify")
def audit_verify(
    against: Annotated[
        str | None,
        typer.Option(help="A checkpoint SEQ:HASH printed earlier by `audit checkpoint`."),
    ] = None,
) -> None:
    """Walk the hash chain and name the first record that breaks it; the chain must extend
    the latest signed anchor (OPSGATE_AUDIT_ANCHOR_DIR) and --against. Exit 1 if it does not;
    anchoring that stopped is a warning."""
    checkpoint = None
    if against:
        try:
            checkpoint = audit_chain.Checkpoint.parse(against)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--against") from exc
    db = _database()
    with db.reading() as session:
        total = audit_chain.count(session)
        with _progress(total, "verifying") as bar:
            task = bar.add_task("verify", total=total)
            result = anchoring.verify_anchored(
                session,
                anchoring.Anchoring.from_settings(get_settings()),
                SystemClock().now(),
                against=checkpoint,
                progress=lambda n: bar.advance(task, n),
            )
    # Report first: recording the run may itself be refused by what verify found.
    if result.ok:
        extends = f", extends {checkpoint}" if checkpoint else ""
        anchored = f", extends the anchor {result.anchor}" if result.anchor else ", no anchor yet"
        typer.echo(f"ok: {result.entries} records verified{extends}{anchored}")
        for finding in result.findings:
            err.print(f"warning: {finding}", style="yellow", markup=False)
    else:
        where = f"record {result.first_bad_id or '(missing)'} (seq {result.first_bad_seq})"
        err.print(f"BROKEN at {where}: {result.problem}", style="red", markup=False)
    try:
        _record_cli_read(db, "audit.verify", {"ok": result.ok, "entries": result.entries})
    except audit_chain.RecordBeyondHead:
        err.print("(this run could not be recorded in the audit trail)", markup=False)
    finally:
        db.dispose()
    if not result.ok:
        raise typer.Exit(1)


@app.command("trace")
def trace_command(
    key: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="A request ID, an execution request ID, a trace ID (32 hex) or an approval "
            "ID (apr_…).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
) -> None:
    """Everything known about one request, oldest first: audit records, the approval and its
    decisions, backend calls, webhook events. Exit 1 when nothing is known. Audited."""
    db = _database()
    with db.reading() as session:
        report = trace_report.gather(session, key)
    _record_cli_read(db, "audit.trace", {"id": key, "events": len(report.events)})
    db.dispose()
    if not report.found:
        err.print(
            f"nothing known about {key}: no audit record, approval, backend call or webhook "
            "event names it",
            style="red",
            markup=False,
        )
        raise typer.Exit(1)
    if as_json:
        for event in report.events:
            typer.echo(json.dumps(event.as_dict(), default=str))
    else:
        table = Table("time", "kind", "what", "result", "ids", title=f"trace {key}")
        for event in report.events:
            ids = "\n".join(f"{name} {value}" for name, value in event.ids.items())
            cells = (event.at.isoformat(timespec="milliseconds"), event.kind, event.what)
            table.add_row(*(Text(cell) for cell in (*cells, event.result, ids)))
        table_console().print(table)
    if report.truncated:
        err.print(f"more than {trace_report.MAX_ROWS} records of one kind: the first shown")


@audit_app.command("anchor")
def audit_anchor(
    force: Annotated[
        bool, typer.Option("--force", help="Sign the head even if it has not moved.")
    ] = False,
    public_key: Annotated[
        bool,
        typer.Option("--public-key", help="Print the signing key's ID and public key only."),
    ] = False,
) -> None:
    """Sign the chain head now and append it to OPSGATE_AUDIT_ANCHOR_DIR (and queue it for
    webhooks subscribed to `audit.anchor`). `opsgate serve` does this on its own; run this
    from cron where no server runs. Exit 1 when the records since the last anchor do not
    chain onto it."""
    from opsgate.core.audit.anchors import AnchorError, public_key_text

    settings = get_settings()
    setup = anchoring.Anchoring.from_settings(settings)
    try:
        if public_key:
            key = setup.signing_key()
            typer.echo(f"{key.key_id} {public_key_text(key.public)}")
            return
        _refuse_if_beyond_head()
        integrations = _setup().load_integrations()
        db = _database()
        try:
            done = anchoring.anchor_head(db, setup, integrations, SystemClock().now(), force=force)
        finally:
            db.dispose()
    except (anchoring.AnchorRefused, AnchorError) as exc:
        err.print(f"not anchored: {exc}", style="red", markup=False)
        raise typer.Exit(1) from exc
    if done is None:
        err.print("the head has not moved since the last anchor; nothing written")
        return
    typer.echo(f"anchored {done.seq}:{done.hash} at {done.anchored_at.isoformat()}")
    err.print(f"signed by {done.key_id}, appended to {setup.sink.path}")


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Print the chain head as SEQ:HASH. Keep it outside the database (ticket, vault, email);
    `audit verify --against` later proves the log still extends it."""
    db = _database()
    with db.reading() as session:
        head = audit_chain.checkpoint(session)
    db.dispose()
    typer.echo(str(head))


def _filters(
    actor: str | None,
    action: str | None,
    target: str | None,
    request_id: str | None,
    result: str | None,
    since: datetime | None,
    until: datetime | None,
    text: str | None,
) -> AuditFilter:
    return AuditFilter(
        actor=actor,
        action=action,
        target=target,
        request_id=request_id,
        result=result,
        since=as_utc(since),
        until=as_utc(until),
        text=text,
    )


@audit_app.command("export")
def audit_export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    out: Annotated[
        Path | None, typer.Option(help="File to write (default: standard output)")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Actor ID")] = None,
    action: Annotated[str | None, typer.Option()] = None,
    target: Annotated[str | None, typer.Option()] = None,
    request_id: Annotated[str | None, typer.Option()] = None,
    result: Annotated[str | None, typer.Option()] = None,
    since: Annotated[datetime | None, typer.Option(help="UTC unless an offset is given")] = None,
    until: Annotated[datetime | None, typer.Option()] = None,
    text: Annotated[str | None, typer.Option(help="Text in the reason")] = None,
) -> None:
    """Stream matching records, oldest first, in constant memory."""
    if fmt not in ("jsonl", "csv"):
        raise typer.BadParameter("jsonl or csv", param_hint="--format")
    where = _filters(actor, action, target, request_id, result, since, until, text)
    db = _database()
    with db.reading() as session:
        total = int(
            session.scalar(select(func.count()).select_from(filtered(where).subquery())) or 0
        )
        handle = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
        try:
            with _progress(total if out else 0, "exporting") as bar:
                task = bar.add_task("export", total=total)
                written = audit_files.export(
                    session, where, handle, fmt=fmt, progress=lambda n: bar.advance(task, n)
                )
        finally:
            if out:
                handle.close()
    _record_cli_read(db, "audit.export", where.as_params() | {"records": written})
    db.dispose()
    err.print(f"{written} records exported")


@audit_app.command("archive")
def audit_archive(
    before: Annotated[
        datetime | None,
        typer.Option(help="Archive records older than this (UTC); default: the retention."),
    ] = None,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write the archive file.")
    ] = Path("."),
) -> None:
    """Export the verified chain prefix older than BEFORE to a file, then remove it from the
    database (recorded in the chain). Retention (OPSGATE_AUDIT_RETENTION_DAYS, default 400
    days) is the default and the floor: younger records are never archived."""
    from opsgate.web.services import Services

    settings = get_settings()
    # One bulk DELETE: not bounded by OPSGATE_DB_STATEMENT_TIMEOUT_SECONDS.
    services = Services.build(settings, maintenance=True)
    floor = services.clock.now() - timedelta(days=settings.audit_retention_days)
    before = as_utc(before) or floor
    if before > floor:
        services.db.dispose()
        raise typer.BadParameter(
            f"records younger than {settings.audit_retention_days} days are kept; use a date "
            f"before {floor.date().isoformat()}",
            param_hint="--before",
        )
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with _progress(1, "archiving") as bar:
            task = bar.add_task("archive", total=None)
            done = audit_files.archive(
                services.db,
                before=before,
                directory=directory,
                actor=_cli_actor(),
                origin=_cli_origin(),
                policy_version=services.policy.version,
                now=services.clock.now(),
                progress=lambda n: bar.advance(task, n),
            )
    except audit_files.ArchiveRefused as exc:
        err.print(f"archive refused: {exc}", style="red", markup=False)
        raise typer.Exit(1) from exc
    finally:
        services.db.dispose()
    typer.echo(
        f"archived {done.records} records (seq {done.first_seq}-{done.through_seq}) to "
        f"{directory}, sha256 {done.file_sha256}; chain continues from {done.through_hash}"
    )


@audit_app.command("verify-archive")
def audit_verify_archive(
    file: Annotated[Path, typer.Argument(help="An archive written by `opsgate audit archive`.")],
) -> None:
    """Check an archive file on its own: every record's hash, and the chain from its start
    hash to its through hash. Exit 1 if anything is off."""
    checked = audit_files.verify_archive(file)
    if not checked.ok:
        err.print(f"BROKEN: {checked.problem}", style="red", markup=False)
        raise typer.Exit(1)
    typer.echo(
        f"ok: {checked.records} records, seq {checked.first_seq}-{checked.through_seq}, "
        f"ending in {checked.through_hash}"
    )


@webhooks_app.command("deliver")
def webhooks_deliver(
    once: Annotated[
        bool, typer.Option("--once", help="Attempt what is due now, then exit (cron).")
    ] = False,
) -> None:
    """Deliver queued webhook events until interrupted (safe beside `opsgate serve` and
    other deliverers)."""
    import contextlib
    import threading

    from opsgate.core.integrations.webhooks import Deliverer
    from opsgate.web.services import Services

    settings = get_settings()
    services = Services.build(settings)
    if not services.integrations.webhooks:
        # Delivering without subscriptions would mark every queued event dead.
        err.print("no webhooks are configured (OPSGATE_INTEGRATIONS)", style="red")
        services.db.dispose()
        raise typer.Exit(2)
    deliverer = Deliverer(
        services.db, services.integrations, services.clock, public_url=settings.public_url
    )
    try:
        if once:
            report = deliverer.deliver_due(limit=100_000)
            err.print(
                f"{report.delivered} delivered, {report.retrying} to retry, {report.dead} dead"
            )
        else:
            err.print("delivering webhook events; Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                deliverer.run(threading.Event())
    finally:
        deliverer.close()
        services.db.dispose()


@webhooks_app.command("list")
def webhooks_list(
    status: Annotated[
        str | None,
        typer.Option(help="Only events of this status: pending, delivered or dead."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
) -> None:
    """List outbox events, newest first."""
    from opsgate.core.integrations.outbox import OutboxStatus
    from opsgate.core.integrations.webhooks import listing

    if status is not None and status not in set(OutboxStatus):
        raise typer.BadParameter("pending, delivered or dead", param_hint="--status")
    db = _database()
    with db.reading() as session:
        rows = listing(session, status, limit)
    db.dispose()
    if as_json:
        for row in rows:
            typer.echo(
                json.dumps(
                    {
                        "id": row.id,
                        "event_id": row.event_id,
                        "event_type": row.event_type,
                        "subscription": row.subscription,
                        "status": row.status,
                        "attempts": row.attempts,
                        "next_attempt_at": row.next_attempt_at.isoformat(),
                        "last_status": row.last_status,
                        "last_error": row.last_error,
                        "request_id": row.request_id,
                        "created_at": row.created_at.isoformat(),
                    }
                )
            )
        return
    table = Table("id", "event", "subscription", "status", "attempts", "next attempt", "last error")
    for row in rows:
        table.add_row(
            row.id,
            row.event_type,
            row.subscription,
            row.status,
            str(row.attempts),
            row.next_attempt_at.isoformat(timespec="seconds") if row.status == "pending" else "",
            (row.last_error or "")[:80],
        )
    table_console().print(table)


@webhooks_app.command("retry")
def webhooks_retry(event_row_id: str) -> None:
    """Queue a dead event again (attempts start over); the next delivery run sends it."""
    from opsgate.core.integrations.webhooks import NotDead, retry_dead

    db = _database()
    try:
        with db.writing() as session:
            try:
                row = retry_dead(session, event_row_id, SystemClock().now())
            except (NotFound, NotDead) as exc:
                err.print(str(exc), style="red", markup=False)
                raise typer.Exit(1) from exc
            now = SystemClock().now()
            record(
                session,
                AuditEntry(
                    action="webhooks.retry",
                    result=AuditResult.SUCCEEDED,
                    target=f"outbox_event:{row.id}",
                    parameters={"event_type": row.event_type, "subscription": row.subscription},
                ),
                actor=_cli_actor(),
                origin=_cli_origin(),
                policy_version=_policy_version(),
                now=now,
            )
            session.commit()
            err.print(f"{row.id} ({row.event_type} to {row.subscription}) queued again")
    finally:
        db.dispose()


@webhooks_app.command("prune")
def webhooks_prune(
    older_than: Annotated[
        str, typer.Option(help="Delete delivered events older than this (e.g. 30d)")
    ] = "30d",
) -> None:
    """Delete delivered events past their retention (dead ones stay until retried or looked
    at). The outbox is a delivery queue, not a record: the audit trail keeps what happened."""
    from opsgate.core.integrations.webhooks import prune_delivered

    db = _database()
    try:
        with db.writing() as session:
            removed = prune_delivered(session, SystemClock().now() - _parse_duration(older_than))
            session.commit()
    finally:
        db.dispose()
    err.print(f"{removed} delivered event(s) pruned")


def _audit_credential(
    session: Session,
    action: str,
    user_id: str,
    token_id: str | None,
    parameters: dict[str, object] | None = None,
    *,
    refusal: token_service.CliTokenRefused | None = None,
) -> None:
    record(
        session,
        AuditEntry(
            action=action,
            result=AuditResult.DENIED if refusal else AuditResult.SUCCEEDED,
            target=f"user:{user_id}",
            parameters={"token_id": token_id, **(parameters or {})} if token_id else parameters,
            error_code=refusal.reason if refusal else None,
            error_message=refusal.message if refusal else None,
        ),
        actor=_cli_actor(),
        origin=_cli_origin(),
        policy_version=_policy_version(),
        now=SystemClock().now(),
    )


@plugins_app.command("list")
def plugins_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Each enabled plugin with its version, target kinds and actions; the policy in use."""
    setup = _setup()
    rows: list[dict[str, Any]] = [
        {
            "name": item.plugin.name,
            "version": item.plugin.version,
            "source": item.source,
            "target_kinds": sorted(k.name for k in item.plugin.target_kinds),
            "actions": sorted(a.name for a in item.plugin.actions),
            "migrations": item.plugin.migrations is not None,
        }
        for item in setup.plugins
    ]
    if as_json:
        sys.stdout.write(json.dumps({"plugins": rows, "policy": str(setup.policy)}) + "\n")
        return
    table = Table(title="plugins")
    for column in ("plugin", "version", "target kinds", "actions", "from"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["version"]),
            ", ".join(row["target_kinds"]) or "-",
            ", ".join(row["actions"]) or "-",
            str(row["source"]),
        )
    table_console().print(table)
    if not rows:
        typer.echo("no plugin enabled: only opsgate's own administration actions")
    typer.echo(f"policy: {setup.policy}")


@new_app.command("plugin")
def new_plugin(
    name: Annotated[str, typer.Argument(help="The package, plugin and target kind name.")],
    directory: Annotated[
        Path | None, typer.Option(help="Where to write it (must not exist). Default: ./NAME.")
    ] = None,
) -> None:
    """A plugin package: one action, its policy, a test with opsgate.testing, a README."""
    try:
        generated = plugin_package.generate(name, directory)
    except plugin_package.ScaffoldError as exc:
        err.print(f"refused: {exc}", style="red", markup=False)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote plugin {name!r} into {generated.directory}:")
    for path in generated.files:
        typer.echo(f"  {path.relative_to(generated.directory)}")
    typer.echo(f"next: cd {generated.directory} && pip install -e '.[test]' && pytest")


def _mount_plugin_commands() -> None:
    """`opsgate <plugin> …` for every enabled plugin that brings commands. A plugin that
    fails to load leaves opsgate's own commands working (they report it when they need it)."""
    try:
        settings = get_settings()
        enabled = load_setup(
            settings.plugins, settings.policy, settings.integrations, settings.declarations
        ).plugins
    except (PluginError, DeclarationsError, ValueError):
        return
    for item in enabled:
        if item.plugin.cli is not None:
            app.add_typer(item.plugin.cli, name=item.plugin.name)


_mount_plugin_commands()


def main() -> None:
    try:
        app()
    except audit_chain.RecordBeyondHead as exc:
        # Any audited command: its append met a record planted beyond the head.
        err.print(f"refused: {exc}", style="red", markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
