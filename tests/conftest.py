"""Shared fixtures. Every database test runs on SQLite and on PostgreSQL through `db_url`.

Each backend's schema (opsgate's, then the demo plugin's) is migrated, and the demo data
seeded, once per run into a template; each test then gets its own copy (a file copy on
SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL), so tests are isolated, may commit, and
may start server processes against it.

On PostgreSQL the template is migrated as the owner (the role of OPSGATE_TEST_POSTGRES_URL),
and every test connects as the app role `opsgate db upgrade` grants (APP_ROLE: row rights, owns
nothing), as production does. `TestDatabase.owner_url` is for tests that act as the owner (an
attacker with the database's keys); `owner_db` is a Database on it.

PostgreSQL comes from OPSGATE_TEST_POSTGRES_URL. When it cannot be reached the PostgreSQL half
is skipped with a message, unless OPSGATE_REQUIRE_POSTGRES=1 (CI), where that is a failure, as
is a run in which no PostgreSQL test passed.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from opsgate.core.clock import FrozenClock
from opsgate.core.identity import tokens
from opsgate.core.identity.users import find_user
from opsgate.db.engine import Database
from opsgate.db.migrate import grant_app_role, upgrade
from opsgate.logging import configure_logging
from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from opsgate_demo import seed as demo_seed
from opsgate_demo.plugin import DEMO_POLICY
from opsgate_demo.plugin import plugin as demo_plugin

# The kit a team uses (installed opsgate registers it itself, under this same name).
pytest_plugins = ["opsgate.testing"]

PG_URL = os.environ.get("OPSGATE_TEST_POSTGRES_URL", "")
REQUIRE_PG = os.environ.get("OPSGATE_REQUIRE_POSTGRES") == "1"
RUN_ID = secrets.token_hex(3)
HOW_TO_ENABLE = (
    "set OPSGATE_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/postgres (a role that may "
    "CREATE DATABASE and CREATE ROLE) to run the PostgreSQL half"
)
BACKENDS = ("sqlite", "postgresql")
# The role the app runs as in the PostgreSQL half (cluster-wide, so one name for every run;
# `grant_app_role` creates it when missing and grants it rights in each template).
APP_ROLE = "opsgate_test_app"

# One in-memory sink for every structured log line of the run; tests read from it.
LOG_SINK = io.StringIO()
configure_logging("INFO", "json", stream=LOG_SINK)


def _pg_admin_conninfo() -> str:
    url = make_url(PG_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_reason_unavailable() -> str | None:
    if not PG_URL:
        return f"OPSGATE_TEST_POSTGRES_URL is not set: {HOW_TO_ENABLE}"
    try:
        with psycopg.connect(_pg_admin_conninfo(), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is unreachable ({exc.__class__.__name__}): {HOW_TO_ENABLE}"


_PG_UNAVAILABLE = _pg_reason_unavailable()
_pg_passed = 0


def pytest_report_header() -> str:
    state = "required" if REQUIRE_PG else "optional"
    return f"opsgate: PostgreSQL {state}: {_PG_UNAVAILABLE or PG_URL}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _pg_passed
    if report.when == "call" and report.passed and "postgresql" in report.nodeid:
        _pg_passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under pytest-xdist the controller sees every worker's reports; a worker judges nothing.
    if hasattr(session.config, "workerinput"):
        return
    if REQUIRE_PG and _pg_passed == 0 and session.testscollected:
        session.config.get_terminal_writer().line(
            "OPSGATE_REQUIRE_POSTGRES=1 but no PostgreSQL test passed", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _pg_execute(sql: str) -> None:
    with psycopg.connect(_pg_admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _pg_url_for(dbname: str) -> str:
    """The owner's URL of database `dbname`."""
    return make_url(PG_URL).set(database=dbname).render_as_string(hide_password=False)


def _pg_app_url_for(dbname: str) -> str:
    """The app role's URL of database `dbname` (the suite's PostgreSQL trusts local logins)."""
    url = make_url(PG_URL).set(database=dbname, username=APP_ROLE, password=None)
    return url.render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def anchor_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test anchors the audit chain into its own directory, with its own key (the
    settings, the CLI and server processes read them from the environment)."""
    directory = tmp_path_factory.mktemp("anchors")
    monkeypatch.setenv("OPSGATE_AUDIT_ANCHOR_DIR", str(directory / "sink"))
    monkeypatch.setenv("OPSGATE_AUDIT_ANCHOR_KEY_FILE", str(directory / "anchor-key.pem"))
    return directory


@dataclass
class World:
    """The demo data set every test database starts with, and a token per demo user."""

    summary: demo_seed.SeedSummary
    tokens: dict[str, str]
    user_ids: dict[str, str]

    def customer(self, n: int = 0) -> str:
        return str(self.summary.customers[n]["id"])

    def account(self, n: int = 0) -> str:
        return str(self.summary.accounts[n]["id"])

    def payment(self, n: int = 0) -> str:
        return str(self.summary.payments[n]["id"])

    def auth(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[username]}"}


def _build_template(url: str, app_url: str | None = None) -> World:
    # opsgate's schema, then the demo plugin's own (the suite runs with the demo enabled).
    upgrade(url, plugins=[demo_plugin()])
    if app_url is not None:
        grant_app_role(url, app_url)
    db = Database(app_url or url)
    now = datetime.now(UTC)
    issued: dict[str, str] = {}
    user_ids: dict[str, str] = {}
    with db.writing() as session:
        summary = demo_seed.seed(session, now=now)
        for username, _name, _roles in demo_seed.DEMO_USERS:
            user = find_user(session, username)
            assert user is not None
            token = tokens.issue_token(session, user, name="test", now=now, ttl=timedelta(days=7))
            issued[username] = token.secret
            user_ids[username] = user.id
        session.commit()
    db.dispose()
    return World(summary, issued, user_ids)


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    templates: dict[str, Any] = {}
    yield templates
    if "postgresql" in templates:
        with psycopg.connect(_pg_admin_conninfo(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"og_{RUN_ID}_%",)
            ).fetchall()
            for (name,) in rows:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def _template(backend: str, templates: dict[str, Any], tmp: pytest.TempPathFactory) -> Any:
    if backend not in templates:
        if backend == "sqlite":
            path = tmp.mktemp("sqlite-template") / "template.db"
            world = _build_template(f"sqlite:///{path}")
            templates[backend] = (path, world)
        else:
            name = f"og_{RUN_ID}_template"
            _pg_execute(f'CREATE DATABASE "{name}"')
            world = _build_template(_pg_url_for(name), _pg_app_url_for(name))
            templates[backend] = (name, world)
    return templates[backend]


@dataclass
class TestDatabase:
    __test__ = False  # a fixture value, not a test class

    backend: str
    url: str  # the app's URL: on PostgreSQL a role that owns nothing
    world: World
    # The owner's URL (migrations, and tests acting as an attacker who holds it); on SQLite,
    # which has no roles, the same file.
    owner_url: str = ""

    def __post_init__(self) -> None:
        self.owner_url = self.owner_url or self.url


_counter = 0


@pytest.fixture(params=BACKENDS)
def test_db(
    request: pytest.FixtureRequest,
    templates: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> Iterator[TestDatabase]:
    """A fresh, migrated, demo-seeded database of each backend, private to this test."""
    global _counter
    backend: str = request.param
    if backend == "postgresql" and _PG_UNAVAILABLE:
        if REQUIRE_PG:
            pytest.fail(_PG_UNAVAILABLE)
        pytest.skip(_PG_UNAVAILABLE)
    source, world = _template(backend, templates, tmp_path_factory)
    if backend == "sqlite":
        path = tmp_path / "opsgate.db"
        shutil.copyfile(source, path)
        yield TestDatabase(backend, f"sqlite:///{path}", world)
        return
    _counter += 1
    name = f"og_{RUN_ID}_{_counter}"
    _pg_execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    try:
        yield TestDatabase(backend, _pg_app_url_for(name), world, _pg_url_for(name))
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def world(test_db: TestDatabase) -> World:
    return test_db.world


@pytest.fixture
def db(test_db: TestDatabase) -> Iterator[Database]:
    database = Database(test_db.url)
    yield database
    database.dispose()


@pytest.fixture
def owner_db(test_db: TestDatabase) -> Iterator[Database]:
    """The same database, connected as its owner (on SQLite: the same file)."""
    database = Database(test_db.owner_url)
    yield database
    database.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))


@pytest.fixture
def settings(test_db: TestDatabase) -> Settings:
    return Settings(database_url=test_db.url, policy=DEMO_POLICY)


@pytest.fixture
def services(settings: Settings, clock: FrozenClock) -> Iterator[Services]:
    built = Services.build(settings, clock=clock)
    yield built
    built.db.dispose()


@pytest.fixture
def client(settings: Settings, services: Services) -> Iterator[TestClient]:
    app = create_app(settings, services, configure_logs=False)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def logs() -> Callable[[], list[dict[str, Any]]]:
    """Call to get the structured log lines written since the test started, parsed."""
    start = len(LOG_SINK.getvalue())

    def read() -> list[dict[str, Any]]:
        text = LOG_SINK.getvalue()[start:]
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    return read


def services_with_policy(services: Services, policy_text: str) -> Services:
    """The same database and clock as `services`, under another policy."""
    from opsgate.core.actions.gateway import Gateway
    from opsgate.core.actions.policy import parse_policy
    from opsgate.core.approvals.gate import Approvals
    from tests.registries import build_registry

    registry = build_registry()
    policy = parse_policy(policy_text, registry)
    gateway = Gateway(
        services.db,
        registry,
        policy,
        services.clock,
        services.gateway.idempotency,
        services.integrations,
    )
    return Services(
        services.settings,
        services.db,
        registry,
        policy,
        services.clock,
        gateway,
        Approvals(gateway),
        services.integrations,
        services.plugins,
        services.records,
    )


def demo_policy_with(replacements: dict[str, str]) -> str:
    """The demo policy text with exact replacements (each must apply)."""
    text = DEMO_POLICY.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text
