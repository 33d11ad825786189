"""Run Alembic migrations from code (the CLI, `make run` and the test fixtures use this), and
give the application's PostgreSQL role exactly the rights it needs.

On PostgreSQL opsgate runs as two roles. The owner (OPSGATE_MIGRATION_DATABASE_URL) owns the
tables and runs migrations; only an owner can `ALTER TABLE … DISABLE TRIGGER`, drop the
append-only triggers or truncate. The app (OPSGATE_DATABASE_URL) owns nothing and holds only
row rights: it may read and write opsgate's tables, but on `audit_records` only SELECT, INSERT
and the DELETE the append-only trigger lets through (an archive permit in the same
transaction), never UPDATE or TRUNCATE. SQLite has no roles: file permissions are its only
boundary.

Each enabled plugin that declares `migrations` has its own Alembic history: its revisions in
`<migrations>/versions`, run by opsgate's one environment (`migrations/env.py`) with the
plugin's metadata, into its own version table `alembic_version_<plugin>`. Separate version
tables rather than branch labels in one: a plugin's history can then never be joined to,
merged with or moved by opsgate's (`alembic_version` is untouched by a plugin's run), its
revision IDs need not be unique across plugins, and enabling or removing a plugin changes
nothing of opsgate's own record. opsgate is migrated first, so a plugin may rely on its tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from opsgate.db.base import Base
from opsgate.db.engine import make_engine, normalise_url

MIGRATIONS = Path(__file__).parent / "migrations"
AUDIT_TABLE = "audit_records"
# Version tables (opsgate's, and `alembic_version_<plugin>` of each plugin) are written by the
# owner's migrations only; the app may read which revisions it runs on.
VERSION_TABLE_PREFIX = "alembic_version"


class Plugin(Protocol):
    """What migrating a plugin reads of an `opsgate.plugin.Plugin` (db/ imports no layer
    above it)."""

    @property
    def name(self) -> str: ...
    @property
    def metadata(self) -> MetaData | None: ...
    @property
    def migrations(self) -> Path | None: ...


class PluginMigrationError(Exception):
    """A plugin's migrations cannot run: say which plugin and why."""


def alembic_config(url: str) -> Config:
    """opsgate's own history."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # version_locations split on os.pathsep only: a plugin's path may hold spaces.
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def version_table(plugin: Plugin) -> str:
    return f"{VERSION_TABLE_PREFIX}_{plugin.name.replace('-', '_')}"


def plugin_config(url: str, plugin: Plugin) -> Config:
    """The plugin's own history: its revisions, its metadata, its version table, opsgate's
    environment. Refused when the plugin's tables would be opsgate's."""
    if plugin.migrations is None or plugin.metadata is None:
        raise PluginMigrationError(
            f"plugin {plugin.name!r}: migrations need both `migrations` and `metadata`"
        )
    versions = plugin.migrations / "versions"
    if not versions.is_dir():
        raise PluginMigrationError(f"plugin {plugin.name!r}: no directory {versions}")
    shared = sorted(set(plugin.metadata.tables) & set(Base.metadata.tables))
    if shared:
        raise PluginMigrationError(
            f"plugin {plugin.name!r} declares tables opsgate owns: {', '.join(shared)}"
        )
    if any(name.startswith(VERSION_TABLE_PREFIX) for name in plugin.metadata.tables):
        raise PluginMigrationError(f"plugin {plugin.name!r} declares a version table")
    config = alembic_config(url)
    config.set_main_option("version_locations", str(versions))
    config.attributes.update(
        metadata=plugin.metadata, version_table=version_table(plugin), owner=plugin.name
    )
    return config


def migrated_plugins(plugins: Sequence[Plugin]) -> list[Plugin]:
    """The plugins that own tables, checked for clashes with each other."""
    owned: dict[str, str] = {}
    found: list[Plugin] = []
    for plugin in plugins:
        if plugin.migrations is None:
            continue
        for table in plugin.metadata.tables if plugin.metadata is not None else ():
            if table in owned:
                raise PluginMigrationError(
                    f"plugins {owned[table]!r} and {plugin.name!r} both declare table {table}"
                )
            owned[table] = plugin.name
        found.append(plugin)
    return found


def upgrade(
    url: str,
    revision: str = "head",
    *,
    app_url: str | None = None,
    plugins: Sequence[Plugin] = (),
) -> None:
    """Migrate the database at `url` (as its owner): opsgate to `revision` (default: its
    head), then each plugin of `plugins` that has migrations to its own head; then, on
    PostgreSQL with an `app_url` naming another role, grant that role its rights."""
    # Every plugin is checked before anything is migrated.
    configs = [plugin_config(url, plugin) for plugin in migrated_plugins(plugins)]
    command.upgrade(alembic_config(url), revision)
    for config in configs:
        command.upgrade(config, "head")
    if app_url is not None:
        grant_app_role(url, app_url)


def upgrade_plugin(url: str, plugin: Plugin, revision: str = "head") -> None:
    """Migrate one plugin's tables to `revision` of its own history (opsgate's untouched)."""
    command.upgrade(plugin_config(url, *migrated_plugins([plugin])), revision)


@dataclass(frozen=True)
class HistoryState:
    """Where one history (opsgate's or a plugin's) stands in a database."""

    owner: str
    version_table: str
    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)


def status(url: str, plugins: Sequence[Plugin] = ()) -> list[HistoryState]:
    """opsgate's current revision and head, then each migrated plugin's."""
    configs = [("opsgate", alembic_config(url))]
    configs += [(p.name, plugin_config(url, p)) for p in migrated_plugins(plugins)]
    engine = make_engine(url, pool_size=1)
    states: list[HistoryState] = []
    try:
        with engine.connect() as connection:
            for name, config in configs:
                table = config.attributes.get("version_table", VERSION_TABLE_PREFIX)
                context = MigrationContext.configure(connection, opts={"version_table": table})
                heads = ScriptDirectory.from_config(config).get_heads()
                states.append(
                    HistoryState(
                        name, table, tuple(context.get_current_heads()), tuple(sorted(heads))
                    )
                )
    finally:
        engine.dispose()
    return states


def role_of(url: str) -> str | None:
    """The role a PostgreSQL URL connects as (None: SQLite, or the driver's default user)."""
    parsed = make_url(normalise_url(url))
    return parsed.username if parsed.get_backend_name() == "postgresql" else None


def grant_app_role(owner_url: str, app_url: str) -> str | None:
    """As the owner, create the app role of `app_url` if it does not exist (with the URL's
    password; the owner needs CREATEROLE for that) and grant it row rights on every table.
    Safe to re-run; returns the role, or None when there is nothing to do (SQLite, or the
    app connects as the owner itself)."""
    role = role_of(app_url)
    if role is None or role == role_of(owner_url):
        return None
    password = make_url(normalise_url(app_url)).password
    engine = make_engine(owner_url, pool_size=1)
    try:
        with engine.begin() as connection:
            _ensure_role(connection, role, None if password is None else str(password))
            _grant(connection, role)
    finally:
        engine.dispose()
    return role


def _ensure_role(connection: Connection, role: str, password: str | None) -> None:
    exists = connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    if exists:
        return
    quoted = _ident(connection, role)
    # NOINHERIT and no attributes: a login that can be granted nothing by membership.
    statement = f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
    if password is not None:
        literal = connection.scalar(text("SELECT quote_literal(:p)"), {"p": password})
        statement += f" PASSWORD {literal}"
    try:
        # In a savepoint: another process creating the same role meanwhile is not an error.
        with connection.begin_nested():
            connection.exec_driver_sql(statement)
    except DBAPIError:
        if not connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
            raise


def _grant(connection: Connection, role: str) -> None:
    quoted = _ident(connection, role)
    database = _ident(connection, str(connection.scalar(text("SELECT current_database()"))))
    for statement in (
        f"GRANT CONNECT ON DATABASE {database} TO {quoted}",
        f"GRANT USAGE ON SCHEMA public TO {quoted}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}",
        # Whatever an earlier grant (or a hand) gave beyond row rights is taken back.
        f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {quoted}",
        f"REVOKE UPDATE ON {AUDIT_TABLE} FROM {quoted}",
        *(
            f"REVOKE INSERT, UPDATE, DELETE ON {_ident(connection, t)} FROM {quoted}"
            for t in _version_tables(connection)
        ),
    ):
        connection.exec_driver_sql(statement)


def _version_tables(connection: Connection) -> list[str]:
    """opsgate's version table and every plugin's, enabled or not."""
    rows = connection.execute(
        text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND (tablename = :t OR tablename LIKE :p)"
        ),
        {"t": VERSION_TABLE_PREFIX, "p": VERSION_TABLE_PREFIX + "\\_%"},
    )
    return sorted(str(row[0]) for row in rows)


def _ident(connection: Connection, name: str) -> str:
    return str(connection.scalar(text("SELECT quote_ident(:n)"), {"n": name}))
