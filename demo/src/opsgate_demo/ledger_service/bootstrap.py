"""`opsgate demo ledger-service init`: the service's schema and the demo money state it takes over.

The rows are copied from an opsgate database that `opsgate demo seed` filled, IDs and all, so
that a target opsgate names is the object the ledger changes. Running it again is harmless:
a ledger that already holds the same accounts is left as it is; one holding other accounts
(e.g. from an opsgate database since re-created) is refused rather than mixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import insert, inspect, select

from opsgate.db.engine import Database
from opsgate_demo.ledger_service.models import DOMAIN_TABLES, create_schema
from opsgate_demo.models import Account

BATCH = 1000


class InitError(Exception):
    """The ledger cannot be initialised from this source; nothing was copied."""


@dataclass(frozen=True)
class InitResult:
    # Rows copied per table; empty when the ledger already held this data.
    copied: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return not self.copied


def initialise(source_url: str, ledger_url: str) -> InitResult:
    """Create the ledger's schema and copy the demo money state from `source_url` in one
    transaction. Raise InitError when the source holds no demo data or the ledger holds
    other data."""
    source, ledger = Database(source_url), Database(ledger_url)
    try:
        create_schema(ledger.engine)
        accounts = Account.__table__.c.id
        with source.reading() as reading, ledger.writing() as session:
            has_demo = inspect(source.engine).has_table(Account.__tablename__)
            wanted = set(reading.scalars(select(accounts))) if has_demo else set()
            if not wanted:
                raise InitError(
                    "the source database holds no demo accounts: run `opsgate db upgrade` and "
                    "`opsgate demo seed` against it first"
                )
            present = set(session.scalars(select(accounts)))
            if present == wanted:
                return InitResult()
            if present:
                raise InitError(
                    f"the ledger database already holds {len(present)} accounts that are not "
                    "the source's; remove it, or name another with --database-url"
                )
            copied: dict[str, int] = {}
            for table in DOMAIN_TABLES:
                rows = [dict(row) for row in reading.execute(select(table)).mappings()]
                for start in range(0, len(rows), BATCH):
                    session.execute(insert(table), rows[start : start + BATCH])
                copied[table.name] = len(rows)
            session.commit()
            return InitResult(copied)
    finally:
        source.dispose()
        ledger.dispose()
