"""`opsgate demo …`: the demo's data and its ledger service, mounted by opsgate's CLI through
the plugin's `cli` (opsgate.plugin.Plugin).

Demo setup, not plugin code: seeding creates opsgate users, passwords and tokens with opsgate's
own CLI helpers, as an installer script would (a team uses `opsgate users create`).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table

from opsgate.cli import DEMO_PASSWORD, _audit_credential, _database, err, table_console
from opsgate.core.clock import SystemClock
from opsgate.core.identity import passwords
from opsgate.core.identity import tokens as token_service
from opsgate.core.identity.users import find_user
from opsgate.settings import get_settings
from opsgate_demo import seed as demo_seed
from opsgate_demo.ledger_service.cli import ledger_app

demo_app = typer.Typer(
    help="The demo backend: its data and its ledger service.", no_args_is_help=True
)
demo_app.add_typer(ledger_app, name="ledger-service")


@demo_app.command("seed")
def demo_seed_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the created records as JSON.")
    ] = False,
    with_tokens: Annotated[
        bool, typer.Option("--tokens", help="Issue a 7-day token per demo user.")
    ] = False,
    demo_passwords: Annotated[
        bool,
        typer.Option(
            "--demo-passwords",
            help=f"Give every demo user the console password {DEMO_PASSWORD!r}. Demo only.",
        ),
    ] = False,
) -> None:
    """Create demo users and data (200 customers, 300 accounts, 1,000 payments)."""
    if with_tokens and get_settings().tokens_are_self_service:
        err.print(
            "self-service tokens are on: people create their own tokens in the console, so "
            "demo seed --tokens is refused",
            style="red",
        )
        raise typer.Exit(2)
    db = _database()
    clock = SystemClock()
    issued: list[tuple[str, str, str]] = []
    with db.writing() as session:
        summary = demo_seed.seed(session, now=clock.now())
        if demo_passwords:
            for entry in summary.users:
                user = find_user(session, entry["username"])
                assert user is not None
                passwords.set_password(session, user, DEMO_PASSWORD, now=clock.now())
                _audit_credential(session, "user.set_password", user.id, None, {"demo": True})
        if with_tokens:
            for entry in summary.users:
                user = find_user(session, entry["username"])
                assert user is not None
                token = token_service.issue_token(
                    session, user, name="demo", now=clock.now(), ttl=timedelta(days=7)
                )
                _audit_credential(session, "token.create", user.id, token.id)
                issued.append((user.username, ",".join(entry["roles"]), token.secret))
        session.commit()
    db.dispose()
    if as_json:
        sys.stdout.write(json.dumps(summary.as_json()) + "\n")
        return
    table = Table(title="demo users", show_lines=False)
    table.add_column("username")
    table.add_column("name")
    table.add_column("roles")
    for entry in summary.users:
        table.add_row(entry["username"], entry["name"], ", ".join(entry["roles"]))
    table_console().print(table)
    if demo_passwords:
        typer.echo(f"Console password of every demo user: {DEMO_PASSWORD}")
    if issued:
        typer.echo("API tokens (valid 7 days, shown once):")
        for username, _, secret in issued:
            typer.echo(f"  {username:<8} {secret}")
    if summary.skipped:
        err.print("demo data already present: customers, accounts and payments left as they are")
    else:
        err.print(
            f"created {len(summary.customers)} customers, {len(summary.accounts)} accounts, "
            f"{len(summary.payments)} payments"
        )
