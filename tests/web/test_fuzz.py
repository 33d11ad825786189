"""A short schemathesis run (the full one is `make fuzz`, bench/fuzz.py): requests generated
from the API's OpenAPI schema against a real server, on SQLite and PostgreSQL, and not one
answered with a server error."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.fuzz import USERNAME, run_schemathesis

from tests.conftest import TestDatabase
from tests.servers import start_server


@pytest.mark.multiprocess
def test_about_500_generated_requests_get_no_server_error(
    test_db: TestDatabase, tmp_path: Path
) -> None:
    server = start_server(
        test_db.url, tmp_path / "server.log", OPSGATE_RECONCILE_INTERVAL_SECONDS="0"
    )
    try:
        result = run_schemathesis(
            server.base_url,
            test_db.world.tokens[USERNAME],
            tmp_path / "fuzz",
            examples=12,
            seed=20261204,
            workers=1,
        )
    finally:
        server.stop()
    assert result.cases >= 400, result.output[-2000:]
    assert result.ok, result.output[-4000:]
