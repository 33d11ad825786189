"""`opsgate new plugin NAME`: the generated package's own tests pass as generated, on
SQLite and (through opsgate.testing's OPSGATE_TESTING_POSTGRES_URL) on PostgreSQL; bad names
and existing directories are refused with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.cli import app
from tests.conftest import _PG_UNAVAILABLE, PG_URL

SRC = Path(__file__).resolve().parents[1] / "src"


def _new(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["new", "plugin", *args])
    return result.exit_code, result.output


def test_generated_plugin_imports_only_the_public_modules(tmp_path: Path) -> None:
    code, output = _new("payouts", "--directory", str(tmp_path / "payouts"))
    assert code == 0, output
    package = tmp_path / "payouts"
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == {
        "pyproject.toml",
        "README.md",
        "src/payouts/__init__.py",
        "src/payouts/plugin.py",
        "src/payouts/policy.toml",
        "src/payouts/py.typed",
        "tests/conftest.py",
        "tests/test_plugin.py",
    }
    pyproject = (package / "pyproject.toml").read_text()
    assert (
        '[project.entry-points."opsgate.plugins"]\npayouts = "payouts.plugin:plugin"' in pyproject
    )
    assert '"opsgate>=0.2,<0.3"' in pyproject
    imported = {
        line.split()[1]
        for path in package.rglob("*.py")
        for line in path.read_text().splitlines()
        if line.startswith(("from opsgate", "import opsgate"))
    }
    assert imported == {"opsgate.plugin", "opsgate.testing"}


def test_generated_plugin_passes_ruff_and_strict_mypy(tmp_path: Path) -> None:
    code, output = _new("payouts", "--directory", str(tmp_path / "payouts"))
    assert code == 0, output
    package = tmp_path / "payouts"
    tools = Path(sys.executable).parent
    ruff = [str(tools / "ruff"), "--isolated"]
    select = ["--select", "E,F,W,I,B,UP,SIM,RUF,PT", "--line-length", "100"]
    checks = [
        [*ruff, "check", *select, "."],
        [*ruff, "format", "--check", "--line-length", "100", "."],
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "src",
         "tests"],
    ]  # fmt: skip
    env = os.environ | {"MYPYPATH": str(SRC), "PYTHONPATH": os.pathsep.join([str(SRC), "src"])}
    for command in checks:
        run = subprocess.run(command, cwd=package, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"{command}: {run.stdout}{run.stderr}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_generated_plugin_tests_pass_as_generated(tmp_path: Path, backend: str) -> None:
    if backend == "postgresql" and _PG_UNAVAILABLE:
        pytest.skip(_PG_UNAVAILABLE)
    code, output = _new("payouts", "--directory", str(tmp_path / "payouts"))
    assert code == 0, output
    package = tmp_path / "payouts"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(package / "src"), str(SRC)])
    if backend == "postgresql":
        env["OPSGATE_TESTING_POSTGRES_URL"] = PG_URL
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout, run.stdout


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Payouts", "not a usable plugin name"),
        ("pay-outs", "not a usable plugin name"),
        ("9lives", "not a usable plugin name"),
        ("class", "Python keyword"),
        ("audit", "one of opsgate's own names"),
        ("opsgate_extra", "one of opsgate's own names"),
        ("json", "standard library"),
        ("opsgate_demo", "one of opsgate's own names"),
        ("pytest", "clashes with a module Python already finds"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(tmp_path: Path, name: str, why: str) -> None:
    code, output = _new(name, "--directory", str(tmp_path / "out"))
    assert code == 2
    assert why in output
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_is_never_overwritten(tmp_path: Path) -> None:
    existing = tmp_path / "payouts"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    code, output = _new("payouts", "--directory", str(existing))
    assert code == 2
    assert "already exists" in output
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_the_default_directory_is_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = _new("payouts")
    assert code == 0, output
    assert (tmp_path / "payouts" / "src" / "payouts" / "plugin.py").is_file()


@pytest.mark.parametrize("conftest_line", [True, False])
def test_installed_opsgate_registers_the_kit_once(tmp_path: Path, conftest_line: bool) -> None:
    """With opsgate's `pytest11` entry point (as pyproject.toml declares it) installed, the
    kit is there without `pytest_plugins`, and naming it too is not a second registration."""
    code, output = _new("payouts", "--directory", str(tmp_path / "payouts"))
    assert code == 0, output
    package = tmp_path / "payouts"
    declared = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    [(name, value)] = declared["project"]["entry-points"]["pytest11"].items()
    site = tmp_path / "site" / "opsgate_entry_points-0.dist-info"
    site.mkdir(parents=True)
    (site / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opsgate-entry-points\nVersion: 0\n"
    )
    (site / "entry_points.txt").write_text(f"[pytest11]\n{name} = {value}\n")
    conftest = package / "tests" / "conftest.py"
    if not conftest_line:
        text = conftest.read_text().replace('pytest_plugins = ["opsgate.testing"]\n', "")
        assert "pytest_plugins" not in text
        conftest.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(package / "src"), str(SRC)])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "invalid"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout
