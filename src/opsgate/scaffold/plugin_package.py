"""Generate a plugin package a team starts from: one action, its policy, a test through
`opsgate.testing`, a README. The generated code imports `opsgate.plugin` and
`opsgate.testing` only, and its tests pass as generated (tests/test_scaffold.py runs them).

Names are refused before anything is written, and an existing directory is never touched.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from opsgate import __version__
from opsgate.plugins import RESERVED_NAMES

TEMPLATES = Path(__file__).parent / "templates" / "plugin"
# Both a Python package name and a plugin, target kind and action noun (plugins.py, registry).
_NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
# Template file → where it lands in the package (`NAME` is replaced by the package name).
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "init.py.tmpl": "src/NAME/__init__.py",
    "plugin.py.tmpl": "src/NAME/plugin.py",
    "policy.toml.tmpl": "src/NAME/policy.toml",
    "py.typed.tmpl": "src/NAME/py.typed",
    "conftest.py.tmpl": "tests/conftest.py",
    "test_plugin.py.tmpl": "tests/test_plugin.py",
}


class ScaffoldError(Exception):
    """The name is not usable, or the directory exists; nothing was written."""


@dataclass(frozen=True)
class Generated:
    directory: Path
    files: tuple[Path, ...]


def check_name(name: str) -> None:
    """Raise ScaffoldError unless `name` can be a new plugin's package, plugin and kind name."""
    if not _NAME.fullmatch(name):
        raise ScaffoldError(
            f"{name!r} is not a usable plugin name: 2-40 characters of lower case letters, "
            "digits and '_', starting with a letter (it is the Python package name, the "
            "plugin's name and its target kind), e.g. 'payouts'"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ScaffoldError(f"{name!r} is a Python keyword; choose another name")
    if name in RESERVED_NAMES or name.startswith("opsgate"):
        raise ScaffoldError(f"{name!r} is one of opsgate's own names; choose another name")
    if name in sys.stdlib_module_names:
        raise ScaffoldError(f"{name!r} clashes with a module of Python's standard library")
    found = importlib.util.find_spec(name)
    if found is not None:
        where = found.origin or ", ".join(found.submodule_search_locations or ()) or "?"
        raise ScaffoldError(
            f"{name!r} clashes with a module Python already finds ({where}); choose another name"
        )


def requirement() -> str:
    """The opsgate release line the generated package depends on (this one's minor)."""
    major, minor = (int(part) for part in __version__.split(".")[:2])
    return f"opsgate>={major}.{minor},<{major}.{minor + 1}"


def generate(name: str, directory: Path | None = None) -> Generated:
    """Write the package `name` into `directory` (default ./NAME), which must not exist."""
    check_name(name)
    target = directory if directory is not None else Path(name)
    if target.exists():
        raise ScaffoldError(f"{target} already exists; nothing was written (choose another)")
    values = {"name": name, "title": name.replace("_", " ").title(), "requirement": requirement()}
    rendered = {
        out.replace("NAME", name): Template((TEMPLATES / source).read_text()).substitute(values)
        for source, out in FILES.items()
    }
    target.mkdir(parents=True)
    written = []
    for relative, text in rendered.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return Generated(target, tuple(written))
