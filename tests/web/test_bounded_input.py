"""Bounded input: bodies are limited before they are read (tighter for callers without
credentials), a stalled body is cut off at a deadline, and each refusal is an audited problem
with its own code. On SQLite and PostgreSQL; the memory and stall tests use a real server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.db.models import AuditRecord
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World
from tests.servers import start_server

PROBLEM = "application/problem+json"
KIB = 1024
MIB = 1024 * KIB


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def audited(services: Services, request_id: str) -> AuditRecord:
    with services.db.reading() as session:
        stmt = select(AuditRecord).where(AuditRecord.request_id == request_id)
        rows = list(session.scalars(stmt))
    assert len(rows) == 1, rows
    return rows[0]


def envelope_of_size(size: int) -> bytes:
    return b'{"target": "payment:x", "payload": {}, "reason": "' + b"a" * size + b'"}'


def test_an_unauthenticated_body_over_the_small_limit_is_refused_by_its_length(
    client: TestClient, services: Services
) -> None:
    response = client.post(
        "/api/v1/actions/payment.reverse",
        content=envelope_of_size(100 * KIB),
        headers={"Content-Type": "application/json"},
    )
    body = assert_problem(response, 413, "payload_too_large")
    record = audited(services, body["request_id"])
    assert (record.result, record.error_code, record.actor_id) == (
        "invalid",
        "payload_too_large",
        None,
    )


def test_an_authenticated_body_may_be_larger_but_not_unbounded(
    client: TestClient, world: World
) -> None:
    headers = world.auth("alice") | {"Content-Type": "application/json"}
    medium = client.post(
        "/api/v1/actions/account.block", content=envelope_of_size(100 * KIB), headers=headers
    )
    assert medium.status_code == 422, medium.text  # read, and refused by the gateway
    assert medium.json()["code"] == "invalid_payload"
    large = client.post(
        "/api/v1/actions/payment.reverse", content=envelope_of_size(2 * MIB), headers=headers
    )
    assert_problem(large, 413, "payload_too_large")


def test_a_chunked_body_is_counted_as_it_streams_and_cut_off(
    client: TestClient, services: Services
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 4 MiB in all, never announced
            yield b"x" * (64 * KIB)

    response = client.post("/api/v1/actions/payment.reverse", content=chunks())
    body = assert_problem(response, 413, "payload_too_large")
    assert audited(services, body["request_id"]).error_code == "payload_too_large"


def test_a_console_form_over_the_limit_is_refused(client: TestClient) -> None:
    response = client.post("/console/login", data={"username": "a" * (200 * KIB)})
    assert response.status_code == 413


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_request(base_url: str, head: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode())
    return sock


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.multiprocess
def test_a_400_mb_unauthenticated_body_is_refused_early_with_memory_flat(
    test_db: TestDatabase, tmp_path: Path
) -> None:
    server = start_server(test_db.url, tmp_path / "server.log")
    try:
        before = rss_kib(server.process.pid)
        total = 400 * MIB
        sent = 0
        statuses = []
        for announced in (True, False):  # by its Content-Length, then chunked and unannounced
            framing = (
                f"Content-Length: {total}\r\n" if announced else "Transfer-Encoding: chunked\r\n"
            )
            sock = raw_request(
                server.base_url,
                "POST /api/v1/actions/payment.reverse HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\n{framing}\r\n",
            )
            chunk = b"x" * MIB
            framed = chunk if announced else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            try:
                for _ in range(400):
                    sock.sendall(framed)
                    sent += len(chunk)
            except OSError:
                pass  # the server answered and closed the connection: what we want
            sock.settimeout(10)
            try:
                statuses.append(read_status(sock))
            except OSError:
                statuses.append(-1)  # reset before we read the answer; memory says the rest
            sock.close()
        after = rss_kib(server.process.pid)
    finally:
        server.stop()
    assert 413 in statuses, statuses
    assert sent < total  # cut off long before the 800 MB were sent
    assert after - before < 50 * KIB, (before, after)  # far less than one body


@pytest.mark.multiprocess
def test_a_stalled_body_is_answered_408_within_the_deadline(
    test_db: TestDatabase, tmp_path: Path
) -> None:
    server = start_server(
        test_db.url, tmp_path / "server.log", OPSGATE_BODY_READ_TIMEOUT_SECONDS="2"
    )
    try:
        sock = raw_request(
            server.base_url,
            "POST /api/v1/actions/payment.reverse HTTP/1.1\r\nHost: x\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"tar',
        )
        started = time.monotonic()
        status = read_status(sock)
        waited = time.monotonic() - started
        sock.close()
    finally:
        server.stop()
    assert status == 408
    assert 1.5 < waited < 5
