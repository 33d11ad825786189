"""Production mode (OPSGATE_ENVIRONMENT=production): no per-host fallbacks.

Without OPSGATE_SECRET_KEY each host generates its own key file. Behind a load balancer that
breaks every console session and CSRF token the moment a request lands on another host; the
first tests show it with two app instances on one database. Production mode refuses to start
without the shared key (and without a provisioned anchor key, or with a test-only switch on)
instead of generating one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from opsgate.core.audit.anchoring import Anchoring
from opsgate.core.audit.anchors import AnchorError, AnchorKey
from opsgate.core.clock import FrozenClock
from opsgate.settings import ProductionRefused, Settings, production_refusals
from opsgate.web.app import create_app
from opsgate.web.security import secret_keys
from opsgate.web.services import Services
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase
from tests.web.console.conftest import PASSWORD, Browser, csrf_of

SHARED = "s" * 40


@contextmanager
def host(test_db: TestDatabase, clock: FrozenClock, **settings: Any) -> Iterator[Browser]:
    """One app instance on the shared database, as a load balancer's backend would run it."""
    config = Settings(database_url=test_db.url, policy=DEMO_POLICY, **settings)
    services = Services.build(config, clock=clock)
    try:
        yield Browser(create_app(config, services, configure_logs=False))
    finally:
        services.db.dispose()


def _move(cookies_from: Browser, to: Browser) -> None:
    """The load balancer sends this browser's next request to another host."""
    to.client.cookies = cookies_from.client.cookies


def test_hosts_with_their_own_key_files_break_sessions_and_csrf_across_them(
    test_db: TestDatabase,
    clock: FrozenClock,
    tmp_path: Path,
    set_password: Callable[[str, str], None],
) -> None:
    set_password("alice", PASSWORD)
    with (
        host(test_db, clock, secret_key_file=tmp_path / "a" / "key") as a,
        host(test_db, clock, secret_key_file=tmp_path / "b" / "key") as b,
    ):
        assert (tmp_path / "a" / "key").read_text() != (tmp_path / "b" / "key").read_text()
        # A sign-in form served by host A, posted to host B: its CSRF token is refused.
        form = a.get("/console/login")
        _move(a, b)
        refused = b.post(
            "/console/login",
            {"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert refused.status_code == 403
        assert "security token" in refused.text
        # Signed in on host A; the next request lands on host B: signed out.
        assert a.sign_in("alice").status_code == 303
        assert a.get("/console").status_code == 200
        _move(a, b)
        moved = b.get("/console")
        assert moved.status_code == 303
        assert moved.headers["location"].startswith("/console/login")


def test_hosts_sharing_opsgate_secret_key_keep_sessions_and_csrf(
    test_db: TestDatabase,
    clock: FrozenClock,
    tmp_path: Path,
    anchor_files: Path,
    set_password: Callable[[str, str], None],
) -> None:
    set_password("alice", PASSWORD)
    AnchorKey.load(anchor_files / "anchor-key.pem", create=True)  # provisioned, as production
    key_file = tmp_path / "keys" / "secret-key"
    shared = {"secret_key": SHARED, "environment": "production", "secret_key_file": key_file}
    with host(test_db, clock, **shared) as a, host(test_db, clock, **shared) as b:
        form = a.get("/console/login")
        _move(a, b)
        signed_in = b.post(
            "/console/login",
            {"username": "alice", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert signed_in.status_code == 303, signed_in.text
        _move(b, a)
        assert a.get("/console").status_code == 200
        # A console form served by A, posted through B: accepted (here, signing out).
        token = csrf_of(a.get("/console").text)
        _move(a, b)
        assert b.post("/console/logout", {"csrf_token": token}).status_code == 303
        assert b.get("/console").status_code == 303
    assert not key_file.parent.exists()  # no per-host key generated


def _production(tmp_path: Path, **settings: Any) -> Settings:
    return Settings(
        environment="production",
        secret_key_file=tmp_path / "secret-key",
        audit_anchor_key_file=tmp_path / "anchor-key",
        **settings,
    )


def test_production_without_the_secret_key_refuses_and_generates_nothing(
    tmp_path: Path, services: Services
) -> None:
    settings = _production(tmp_path)
    with pytest.raises(ProductionRefused, match="OPSGATE_SECRET_KEY") as refused:
        create_app(settings, services, configure_logs=False)
    assert "across hosts" in str(refused.value)
    with pytest.raises(ProductionRefused, match="OPSGATE_SECRET_KEY"):
        secret_keys(settings)
    assert not (tmp_path / "secret-key").exists()
    # Outside production the same settings still generate the development key (make run).
    development = Settings(secret_key_file=tmp_path / "secret-key")
    assert secret_keys(development) == secret_keys(development)
    assert (tmp_path / "secret-key").exists()


def test_production_needs_a_provisioned_anchor_key(tmp_path: Path) -> None:
    settings = _production(tmp_path, secret_key=SHARED)
    [refusal] = production_refusals(settings)
    assert "OPSGATE_AUDIT_ANCHOR_KEY_FILE" in refusal
    with pytest.raises(AnchorError):
        Anchoring.from_settings(settings).signing_key()
    assert not (tmp_path / "anchor-key").exists()
    # Provisioned (here by opsgate's own generator, as `openssl genpkey` would): accepted.
    AnchorKey.load(tmp_path / "anchor-key", create=True)
    assert production_refusals(settings) == []
    # With anchoring off there is nothing to sign, so no key is needed.
    (tmp_path / "anchor-key").unlink()
    quiet = _production(
        tmp_path, secret_key=SHARED, audit_anchor_interval_seconds=0, audit_anchor_every_records=0
    )
    assert production_refusals(quiet) == []


def test_production_refuses_test_only_switches(tmp_path: Path) -> None:
    AnchorKey.load(tmp_path / "anchor-key", create=True)
    refusals = production_refusals(
        _production(
            tmp_path, secret_key=SHARED, bench_endpoints=True, fault_injection="before_execution"
        )
    )
    assert len(refusals) == 2
    assert "OPSGATE_BENCH_ENDPOINTS" in refusals[0]
    assert "OPSGATE_FAULT_INJECTION" in refusals[1]


def test_production_refuses_a_sqlite_database_not(tmp_path: Path) -> None:
    """SQLite on one host is a legitimate deployment: production mode does not refuse it."""
    AnchorKey.load(tmp_path / "anchor-key", create=True)
    settings = _production(tmp_path, secret_key=SHARED, database_url="sqlite:///./x.db")
    assert production_refusals(settings) == []


def test_opsgate_serve_in_production_without_the_key_exits_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")} | {
        "OPSGATE_ENVIRONMENT": "production",
        "OPSGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}",
        "OPSGATE_SECRET_KEY_FILE": str(tmp_path / "secret-key"),
        "OPSGATE_AUDIT_ANCHOR_KEY_FILE": str(tmp_path / "anchor-key"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "opsgate.cli", "serve", "--port", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "OPSGATE_SECRET_KEY" in message
    assert "OPSGATE_AUDIT_ANCHOR_KEY_FILE" in message
    assert list(tmp_path.iterdir()) == []  # no key file, no database
