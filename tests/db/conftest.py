"""Empty databases for migration tests, on the backend of `test_db` (which decides skipping)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, TestDatabase, _pg_execute, _pg_url_for


@pytest.fixture
def new_empty_url(test_db: TestDatabase, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Call for the owner's URL of another fresh, empty database (dropped after the test)."""
    made: list[str] = []

    def make() -> str:
        if test_db.backend == "sqlite":
            return f"sqlite:///{tmp_path / f'empty-{secrets.token_hex(3)}.db'}"
        name = f"og_{RUN_ID}_mig_{secrets.token_hex(3)}"
        _pg_execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _pg_url_for(name)

    yield make
    for name in made:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_url(new_empty_url: Callable[[], str]) -> str:
    return new_empty_url()
