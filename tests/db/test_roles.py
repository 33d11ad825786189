"""The app's PostgreSQL role owns nothing (DESIGN.md invariant 11): whoever holds the app's
credentials cannot switch the append-only triggers off, rewrite or empty the audit trail, or
change the schema. SQLite has no roles (its boundary is the file's permissions)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.identity.actors import Origin
from opsgate.db.engine import Database
from opsgate.db.migrate import grant_app_role, role_of
from opsgate.settings import get_settings
from tests.conftest import APP_ROLE, RUN_ID, TestDatabase, _pg_app_url_for, _pg_execute, _pg_url_for

NOW = datetime(2026, 1, 5, tzinfo=UTC)
REFUSED = {
    "disable the triggers": "ALTER TABLE audit_records DISABLE TRIGGER ALL",
    "drop a trigger": "DROP TRIGGER audit_records_append_only ON audit_records",
    "bypass triggers by replication mode": "SET session_replication_role = replica",
    "delete an audit record": "DELETE FROM audit_records WHERE seq = 1",
    "rewrite an audit record": "UPDATE audit_records SET reason = 'x' WHERE seq = 1",
    "empty the audit trail": "TRUNCATE audit_records",
    "change the migration history": "UPDATE alembic_version SET version_num = '0001'",
    "change a plugin's migration history": "DELETE FROM alembic_version_demo",
    "change a plugin's table": "ALTER TABLE payments DROP CONSTRAINT ck_payments_amount_positive",
    "add a trigger of its own": (
        "CREATE TRIGGER t BEFORE INSERT ON audit_records "
        "FOR EACH ROW EXECUTE FUNCTION opsgate_audit_append_only()"
    ),
    "create a table": "CREATE TABLE mine (id int)",
    # The anchor file lives on the app host; the database host's files are out of reach too.
    "write a file on the database host": "COPY (SELECT 1) TO '/tmp/opsgate-anchor-probe'",
}


@pytest.fixture
def postgres_only(test_db: TestDatabase, db: Database) -> TestDatabase:
    """A PostgreSQL test database holding one audit record (written by the app)."""
    if test_db.backend != "postgresql":
        pytest.skip("SQLite has no roles: protect the database file's permissions instead")
    with db.writing() as session:
        entry = AuditEntry(action="test.probe", result=AuditResult.SUCCEEDED)
        record(session, entry, actor=None, origin=Origin("probe"), policy_version=None, now=NOW)
        session.commit()
    return test_db


def test_the_suite_runs_as_the_app_role_which_owns_nothing(
    postgres_only: TestDatabase, db: Database
) -> None:
    assert role_of(postgres_only.url) == APP_ROLE != role_of(postgres_only.owner_url)
    with db.reading() as session:
        assert session.scalar(text("SELECT current_user")) == APP_ROLE
        owned = session.scalar(
            text(
                "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                "WHERE r.rolname = current_user"
            )
        )
        superuser = session.scalar(
            text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": APP_ROLE}
        )
    assert (owned, superuser) == (0, False)


@pytest.mark.parametrize("attempt", sorted(REFUSED))
def test_the_app_role_cannot(postgres_only: TestDatabase, db: Database, attempt: str) -> None:
    with db.writing() as session:
        assert session.execute(text("SELECT count(*) FROM audit_records")).scalar() == 1
        with pytest.raises(
            DBAPIError, match=r"permission denied|must be owner|must be superuser|append-only"
        ):
            session.execute(text(REFUSED[attempt]))


def test_granting_is_safe_to_repeat_and_nothing_to_do_as_the_owner(
    postgres_only: TestDatabase, db: Database
) -> None:
    assert grant_app_role(postgres_only.owner_url, postgres_only.url) == APP_ROLE
    assert grant_app_role(postgres_only.owner_url, postgres_only.owner_url) is None
    with db.writing() as session:  # still only row rights, and those still work
        session.execute(text("INSERT INTO audit_archive_permits (id) VALUES ('prm_probe')"))
        session.rollback()


def test_db_upgrade_migrates_as_the_owner_and_grants_the_app_role(
    postgres_only: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`opsgate db upgrade` with the two URLs, on an empty database: the owner owns every
    table, and the app role (from OPSGATE_DATABASE_URL) can read and write rows at once."""
    name = f"og_{RUN_ID}_roles_{secrets.token_hex(3)}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("OPSGATE_MIGRATION_DATABASE_URL", _pg_url_for(name))
        monkeypatch.setenv("OPSGATE_DATABASE_URL", _pg_app_url_for(name))
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["db", "upgrade"])
        get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        assert f"app role {APP_ROLE}: row rights granted" in result.stderr
        db = Database(_pg_app_url_for(name))
        try:
            with db.writing() as session:
                entry = AuditEntry(action="test.probe", result=AuditResult.SUCCEEDED)
                record(session, entry, actor=None, origin=Origin("p"), policy_version=None, now=NOW)
                # The enabled demo plugin's tables were migrated too, with the same row rights.
                session.execute(
                    text(
                        "INSERT INTO ledger_transactions (id, kind, memo, posted_at) "
                        "VALUES ('ltx_probe', 'probe', 'm', now())"
                    )
                )
                session.commit()
            with db.reading() as session:
                owners = set(
                    session.scalars(
                        text(
                            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
                        )
                    )
                )
        finally:
            db.dispose()
        assert owners == {role_of(_pg_url_for(name))}
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
