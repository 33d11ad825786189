"""Concurrent writers in two `opsgate serve` processes extend one unbroken audit chain, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from opsgate.core.audit.chain import Checkpoint, checkpoint, verify
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from tests.conftest import TestDatabase
from tests.servers import Server, two_servers_on

pytestmark = pytest.mark.multiprocess

WRITERS = 8
NOTES_EACH = 6


@pytest.fixture
def two_servers(test_db: TestDatabase, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with two_servers_on(test_db.url, tmp_path) as servers:
        yield servers


def test_concurrent_writers_in_two_processes_extend_one_chain(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    world = test_db.world

    def writer(n: int) -> list[httpx.Response]:
        server = two_servers[n % 2]
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            return [
                http.post(
                    "/api/v1/actions/customer.add_note",
                    json={
                        "target": f"customer:{world.customer((n + i) % 7)}",
                        "payload": {"text": f"writer {n} note {i}"},
                        "reason": "chain under concurrency",
                    },
                    headers=world.auth(("alice", "bob")[n % 2])
                    | {"X-Request-ID": f"chain-{n}-{i}"},
                )
                for i in range(NOTES_EACH)
            ]

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        responses = [r for batch in pool.map(writer, range(WRITERS)) for r in batch]
    assert [r.status_code for r in responses] == [200] * (WRITERS * NOTES_EACH), [
        r.text for r in responses if r.status_code != 200
    ]

    db = Database(test_db.url)
    try:
        with db.reading() as session:
            rows = list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))
            result = verify(session)
            head = checkpoint(session)
    finally:
        db.dispose()
    assert result.ok, result
    assert result.entries == len(rows)
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert len({row.prev_hash for row in rows}) == len(rows)
    assert head == Checkpoint(rows[-1].seq, rows[-1].hash)
    written = {r.json()["audit_id"] for r in responses}
    assert written <= {row.id for row in rows}
    assert len(written) == WRITERS * NOTES_EACH
    starts = [row for row in rows if row.action == "system.start"]
    assert len(starts) == 2  # one per process, chained like everything else
