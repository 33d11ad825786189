"""Migrations on a database that already holds data (the demo world plus audit records)."""

from __future__ import annotations

from alembic import command

from opsgate.core.audit.chain import verify
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.migrate import alembic_config, upgrade
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World


def test_downgrade_and_upgrade_keep_data_and_rebuild_the_chain(
    test_db: TestDatabase, services: Services, world: World
) -> None:
    clerk = Actor(id=world.user_ids["alice"], name="alice", roles=frozenset({"support_agent"}))
    for n in range(3):
        services.gateway.submit(
            clerk,
            "customer.add_note",
            {"target": f"customer:{world.customer(n)}", "payload": {"text": "hi"}, "reason": "r"},
            Origin(f"m-{n}"),
        )
    services.db.dispose()
    # Migrations run as the owner; the upgrade grants the app role its rights on the tables
    # it recreated, and the app verifies the chain.
    config = alembic_config(test_db.owner_url)
    command.downgrade(config, "0002")  # recreates tables that hold rows and foreign keys
    upgrade(test_db.owner_url, app_url=test_db.url)
    command.check(config)
    db = Database(test_db.url)
    with db.reading() as session:
        result = verify(session)
    db.dispose()
    assert result.ok, result
    assert result.entries == 3
