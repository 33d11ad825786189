"""Database triggers that make `audit_records` append-only, on SQLite and PostgreSQL.

UPDATE is always refused; DELETE only while a row exists in `audit_archive_permits`, which
only `opsgate audit archive` writes, inside its own transaction. (Someone who can drop
triggers can still rewrite the table: the hash chain and external checkpoints catch that.)

Every migration that recreates `audit_records` (SQLite batch mode) must call `install` again.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

_SQLITE = (
    """
    CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
    BEGIN SELECT RAISE(ABORT, 'audit_records is append-only'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
    WHEN NOT EXISTS (SELECT 1 FROM audit_archive_permits)
    BEGIN SELECT RAISE(ABORT, 'audit_records is append-only: use opsgate audit archive'); END
    """,
)

_POSTGRESQL = (
    """
    CREATE OR REPLACE FUNCTION opsgate_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_archive_permits) THEN
        RETURN OLD;
      END IF;
      RAISE EXCEPTION 'audit_records is append-only (% refused): use opsgate audit archive',
        TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """
    CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION opsgate_audit_append_only()
    """,
    """
    CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION opsgate_audit_append_only()
    """,
)


def install(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        for statement in _POSTGRESQL:
            # psycopg reads '%' as a placeholder marker; the function's RAISE uses one.
            connection.exec_driver_sql(statement.replace("%", "%%"))
    else:
        for statement in _SQLITE:
            connection.exec_driver_sql(statement)


def remove(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            "DROP TRIGGER IF EXISTS audit_records_append_only ON audit_records"
        )
        connection.exec_driver_sql(
            "DROP TRIGGER IF EXISTS audit_records_no_truncate ON audit_records"
        )
        connection.exec_driver_sql("DROP FUNCTION IF EXISTS opsgate_audit_append_only()")
    else:
        connection.exec_driver_sql("DROP TRIGGER IF EXISTS audit_records_no_update")
        connection.exec_driver_sql("DROP TRIGGER IF EXISTS audit_records_no_delete")
