"""`opsgate demo ledger-service`: initialise and serve the demo ledger (mounted by opsgate's
CLI)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from opsgate.db.engine import make_engine
from opsgate_demo.ledger_service.bootstrap import InitError, initialise
from opsgate_demo.ledger_service.models import is_initialised
from opsgate_demo.ledger_service.settings import (
    LedgerDatabaseSettings,
    LedgerSettings,
    settings_error,
)

ledger_app = typer.Typer(
    help="The demo ledger as a separate service (settings: OPSGATE_LEDGER_*).",
    no_args_is_help=True,
)
err = Console(stderr=True)


@ledger_app.command("init")
def ledger_init(
    source: Annotated[
        str,
        typer.Option(
            "--from", help="URL of a seeded opsgate database to copy the money state from."
        ),
    ],
    database_url: Annotated[
        str | None,
        typer.Option(help="The ledger's database (default: OPSGATE_LEDGER_DATABASE_URL)."),
    ] = None,
) -> None:
    """Create the ledger's database and copy the demo money state from opsgate's (same IDs).

    Copies customers, accounts, ledger transactions and entries, payments and reversals.
    Does nothing when the ledger already holds them."""
    url = database_url or LedgerDatabaseSettings().database_url
    try:
        result = initialise(source, url)
    except InitError as exc:
        err.print(f"ledger not initialised: {exc}", style="red", markup=False)
        raise typer.Exit(1) from exc
    if result.skipped:
        err.print("ledger already initialised from this data: left as it is")
        return
    err.print(
        "ledger initialised: "
        + ", ".join(f"{count} {table}" for table, count in result.copied.items())
    )


@ledger_app.command("serve")
def ledger_serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8100,
) -> None:
    """Serve the ledger with uvicorn. Needs OPSGATE_LEDGER_SECRET and an initialised database."""
    import uvicorn

    try:
        settings = LedgerSettings()
    except ValidationError as exc:
        err.print(settings_error(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    engine = make_engine(settings.database_url)
    try:
        ready = is_initialised(engine)
    finally:
        engine.dispose()
    if not ready:
        err.print(
            f"the ledger database {settings.database_url} is not initialised: run "
            "`opsgate demo ledger-service init --from <opsgate database URL>` first",
            style="red",
            markup=False,
        )
        raise typer.Exit(2)
    uvicorn.run(
        "opsgate_demo.ledger_service.app:create_app",
        factory=True,
        host=host,
        port=port,
        access_log=False,
        log_level=settings.log_level.lower(),
    )
