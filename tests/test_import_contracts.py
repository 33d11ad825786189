"""The import contracts of pyproject.toml ([tool.importlinter], run by `make lint`): the tree
keeps them, and each one bites. A copy of the two packages gets one planted import; the same
contracts, run on the copy, must name it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = {"opsgate": ROOT / "src" / "opsgate", "opsgate_demo": ROOT / "demo/src/opsgate_demo"}


def _config() -> str:
    """The contracts exactly as pyproject.toml declares them, as a file of their own."""
    section = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]", f"root_packages = {section['root_packages']!r}"]
    for contract in section["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {_toml(value)}" for key, value in contract.items()]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lint(cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    run = _lint(ROOT, [ROOT / "src", ROOT / "demo/src"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 kept, 0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        (
            "opsgate/core/planted.py",
            "import opsgate_demo.models\n",
            "opsgate.core.planted -> opsgate_demo.models",
        ),
        (
            "opsgate/web/planted.py",
            "from opsgate_demo import search\n",
            "opsgate.web.planted -> opsgate_demo",
        ),
        (
            "opsgate_demo/planted.py",
            "from opsgate.core.ids import new_id\n",
            "opsgate_demo.planted -> opsgate.core.ids",
        ),
        (
            "opsgate_demo/planted.py",
            "from opsgate.db.models import User\n",
            "opsgate_demo.planted -> opsgate.db.models",
        ),
        (
            "opsgate/core/planted.py",
            "from opsgate.web import services\n",
            "opsgate.core.planted -> opsgate.web",
        ),
        (
            "opsgate/db/planted.py",
            "from opsgate.core import clock\n",
            "opsgate.db.planted -> opsgate.core",
        ),
        (
            "opsgate/core/planted.py",
            "from opsgate import plugins\n",
            "opsgate.core.planted -> opsgate.plugins",
        ),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, source: str, broken: str
) -> None:
    for name, package in PACKAGES.items():
        shutil.copytree(
            package,
            tmp_path / "src" / name,
            ignore=shutil.ignore_patterns("__pycache__", "static", "templates"),
        )
    (tmp_path / "pyproject.toml").write_text(_config())
    clean = _lint(tmp_path, [tmp_path / "src"])
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (tmp_path / "src" / module).write_text(source)
    run = _lint(tmp_path, [tmp_path / "src"])
    assert run.returncode != 0, run.stdout
    assert broken in run.stdout, run.stdout
