"""The built wheel, installed without the dev extras into a fresh virtual environment, gives a
working `opsgate`: version, policy check with and without a plugin, migrations, and a server
that finds its templates, static files and Swagger UI (package data, not the source tree).

Slow (a wheel build and a dependency install from the configured package index), so one
module-scoped environment serves every test here; `-m "not distribution"` leaves it out.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port

pytestmark = pytest.mark.distribution

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]

TINY_PLUGIN = '''
"""A plugin as small as one can be: one target kind, one action, its own policy."""

from pathlib import Path

from opsgate.plugin import ActionSpec, Change, Outcome, Payload, Plugin, RiskClass, TargetKind


class Poke(Payload):
    reason: str


WIDGETS = {"w1": {"id": "w1", "version": 1}}

widget = TargetKind(
    name="widget",
    load=lambda session, ident, lock: WIDGETS.get(ident),
    snapshot=lambda obj: dict(obj),
    fields=frozenset({"id", "version"}),
)
poke = ActionSpec(
    name="widget.poke",
    label="Poke",
    description="Poke a widget.",
    risk=RiskClass.WRITE,
    target_kind="widget",
    payload_model=Poke,
    handler=lambda ctx, obj, payload: Outcome({"poked": True}),
    preview=lambda ctx, obj, payload: Change({"poked": False}, {"poked": True}),
)
plugin = Plugin(
    name="tiny",
    target_kinds=[widget],
    actions=[poke],
    policy=Path(__file__).with_name("tiny_policy.toml"),
)
'''

TINY_POLICY = """
[roles.admin]
description = "Administers opsgate."

[roles.operator]
description = "Pokes widgets."

[actions."admin.assign_role"]
allow = ["admin"]

[actions."admin.assign_role".approval]
mode = "enforce"
approver_roles = ["admin"]
expires_in = "24h"
tiers = [{ quorum = 1 }]

[actions."widget.poke"]
allow = ["operator"]

[capabilities."records.search"]
allow = ["admin"]

[capabilities."audit.read"]
allow = ["admin"]

[capabilities."metrics.read"]
allow = ["admin"]
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout on the path (the suite runs with PYTHONPATH=src)
    and without any OPSGATE_ setting of the test run."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPSGATE_", "PYTHON"))}
    return base | extra


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    work: Path

    @property
    def opsgate(self) -> Path:
        return self.venv / "bin" / "opsgate"

    def env(self, **extra: str) -> dict[str, str]:
        return _clean_env(OPSGATE_LOG_FORMAT="json", **extra)

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.opsgate), *args],
            cwd=self.work,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _build_wheel(into: Path) -> Path:
    """Build from a copy of the sources, so the checkout gets no build/ or egg-info."""
    source = into / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(
        ROOT / "src" / "opsgate",
        source / "src" / "opsgate",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(into / "dist"), str(source)],
        env=_clean_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (into / "dist").glob("opsgate-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("distribution")
    wheel = _build_wheel(base)
    venv = base / "venv"
    # A fresh environment, no system site packages: every dependency comes from the wheel's own
    # metadata, resolved by pip from its configured index.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installing = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-compile", str(wheel)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installing.returncode == 0, installing.stderr
    work = base / "work"
    work.mkdir()
    return Installed(wheel, venv, work)


def test_the_wheel_holds_the_runtime_files_and_no_demo(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert not [name for name in names if "opsgate_demo" in name]
    for needed in (
        "opsgate/policy.toml",
        "opsgate/py.typed",
        "opsgate/web/templates/base.html",
        "opsgate/web/static/console.css",
        "opsgate/web/static/swagger-ui/swagger-ui-bundle.js",
        "opsgate/db/migrations/env.py",
        "opsgate/db/migrations/script.py.mako",
    ):
        assert needed in names, needed
    assert any(name.startswith("opsgate/db/migrations/versions/0001") for name in names)
    # Nothing of the test suite or the demo's distribution comes along.
    assert not [name for name in names if name.startswith(("tests/", "demo/"))]


def test_version_is_the_distributions(installed: Installed) -> None:
    done = installed.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"opsgate {VERSION}"


def test_no_plugin_installed_means_the_built_in_policy(installed: Installed) -> None:
    listed = installed.run("plugins", "list")
    assert listed.returncode == 0, listed.stderr
    assert "demo" not in listed.stdout
    done = installed.run("policy", "check")
    assert done.returncode == 0, done.stderr
    assert "policy.toml is valid" in done.stdout
    assert str(installed.venv) in done.stdout  # the installed copy, not this checkout's


def test_a_plugin_named_in_opsgate_plugins_brings_its_actions_and_policy(
    installed: Installed, tmp_path: Path
) -> None:
    (tmp_path / "tiny_plugin.py").write_text(textwrap.dedent(TINY_PLUGIN), encoding="utf-8")
    (tmp_path / "tiny_policy.toml").write_text(TINY_POLICY, encoding="utf-8")
    env = {"OPSGATE_PLUGINS": "tiny_plugin:plugin", "PYTHONPATH": str(tmp_path)}
    done = installed.run("policy", "check", **env)
    assert done.returncode == 0, done.stderr
    assert f"policy {tmp_path / 'tiny_policy.toml'} is valid" in done.stdout
    # The plugin's action is checked against the policy: one naming an unknown action fails.
    (tmp_path / "tiny_policy.toml").write_text(
        TINY_POLICY.replace("widget.poke", "widget.pokes"), encoding="utf-8"
    )
    refused = installed.run("policy", "check", **env)
    assert refused.returncode != 0
    assert "widget.pokes" in refused.stdout + refused.stderr


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


@pytest.fixture
def migrated(installed: Installed, tmp_path: Path) -> Path:
    """A SQLite file migrated by the installed wheel's `opsgate db upgrade`."""
    database = tmp_path / "opsgate.db"
    done = installed.run("db", "upgrade", OPSGATE_DATABASE_URL=f"sqlite:///{database}")
    assert done.returncode == 0, done.stderr
    return database


def test_the_installed_wheel_migrates(migrated: Path) -> None:
    assert {"alembic_version", "audit_records", "users", "approval_requests"} <= _tables(migrated)


def test_opsgate_alone_creates_no_demo_tables(migrated: Path) -> None:
    tables = _tables(migrated)
    assert not {"customers", "accounts", "payments", "notes"} & tables, sorted(tables)


@pytest.fixture
def served(installed: Installed, migrated: Path, tmp_path: Path) -> Iterator[str]:
    """`opsgate serve` from the installed wheel, on a free port, until it answers."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(installed.opsgate), "serve", "--port", str(port)],
        cwd=installed.work,
        env=installed.env(
            OPSGATE_DATABASE_URL=f"sqlite:///{migrated}",
            OPSGATE_SECRET_KEY_FILE=str(tmp_path / "secret-key"),
            OPSGATE_AUDIT_ANCHOR_DIR=str(tmp_path / "anchors"),
            OPSGATE_AUDIT_ANCHOR_KEY_FILE=str(tmp_path / "anchor-key"),
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/api/v1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_the_installed_server_serves_console_and_api_docs(served: str) -> None:
    assert httpx.get(f"{served}/api/v1/healthz", timeout=5).status_code == 200
    # Templates: the sign-in page renders; static files and the vendored Swagger UI are there.
    login = httpx.get(f"{served}/console/login", timeout=5)
    assert login.status_code == 200
    assert "<form" in login.text
    assert httpx.get(f"{served}/console/static/console.css", timeout=5).status_code == 200
    assert httpx.get(f"{served}/api/v1/docs", timeout=5).status_code == 200
    bundle = httpx.get(f"{served}/api/v1/docs/assets/swagger-ui-bundle.js", timeout=5)
    assert bundle.status_code == 200
    assert len(bundle.content) > 100_000
