"""OpenTelemetry (web/tracing.py): on only when the OTEL_ variables ask; then spans for the
request, its SQL statements and outgoing httpx calls, in the trace the audit record names;
off, nothing of the SDK is even imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from opsgate.core.tracing import TraceParent, activated, parse_traceparent
from opsgate.db.models import AuditRecord
from opsgate.settings import Settings
from opsgate.web import tracing
from opsgate.web.app import create_app
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World

Logs = Callable[[], list[dict[str, Any]]]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


# --- when it is on -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"},
            False,
        ),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_enabled_follows_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert tracing.enabled(env) is on


def test_exporters_come_from_the_environment() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    both = tracing.exporters_from({"OTEL_TRACES_EXPORTER": "otlp, console"})
    assert [type(e) for e in both] == [OTLPSpanExporter, ConsoleSpanExporter]
    by_endpoint = tracing.exporters_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"})
    assert [type(e) for e in by_endpoint] == [OTLPSpanExporter]
    for exporter in (*both, *by_endpoint):
        exporter.shutdown()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
    ],
)
def test_settings_opsgate_cannot_honour_fail_at_start(env: dict[str, str]) -> None:
    with pytest.raises(tracing.TracingConfigError):
        tracing.exporters_from(env)


# --- on: spans in the audit record's trace ---------------------------------------------------


@pytest.fixture
def traced(
    settings: Settings, services: Services
) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    app = create_app(settings, services, configure_logs=False)
    assert app.state.tracing is None  # the test run sets no OTEL_ variable
    exporter = InMemorySpanExporter()
    installed = tracing.install(app, services.db.engine, [exporter], set_global=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, exporter
    finally:
        installed.shutdown()


def finished(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.context is not None and f"{span.context.trace_id:032x}" == trace_id
    ]


def add_note(client: TestClient, world: World, headers: dict[str, str]) -> httpx.Response:
    return client.post(
        "/api/v1/actions/customer.add_note",
        headers=headers | world.auth("alice"),
        json={"target": f"customer:{world.customer()}", "payload": {"text": "hi"}, "reason": "r"},
    )


def test_request_and_sql_spans_share_the_audit_records_trace(
    traced: tuple[TestClient, InMemorySpanExporter],
    services: Services,
    world: World,
    logs: Logs,
) -> None:
    client, exporter = traced
    response = add_note(client, world, {"traceparent": TRACEPARENT, "X-Request-ID": "otel-1"})
    assert response.status_code == 200, response.text
    tracing_installed = tracing._active
    assert tracing_installed is not None
    tracing_installed.provider.force_flush()

    spans = finished(exporter, TRACE)
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    sql = [s for s in spans if (s.attributes or {}).get("db.statement")]
    assert any("INSERT INTO audit_records" in str(s.attributes["db.statement"]) for s in sql)
    assert server.context is not None
    server_span = f"{server.context.span_id:016x}"
    # The server span names opsgate's request ID and, beside it, the caller's own.
    assert (server.attributes or {}).get("opsgate.request_id") == response.headers["x-request-id"]
    assert (server.attributes or {}).get("opsgate.client_request_id") == "otel-1"
    # The IDs opsgate prints are the ones the tracing backend shows.
    returned = parse_traceparent(response.headers["traceresponse"])
    assert returned is not None
    assert (returned.trace_id, returned.span_id) == (TRACE, server_span)
    with services.db.reading() as session:
        row = session.scalars(
            select(AuditRecord).where(AuditRecord.client_request_id == "otel-1")
        ).one()
    assert row.trace_id == TRACE
    lines = [line for line in logs() if line.get("client_request_id") == "otel-1"]
    assert {"action", "http_request"} <= {line["event"] for line in lines}
    assert {(line["trace_id"], line["span_id"]) for line in lines} == {(TRACE, server_span)}


def test_without_traceparent_the_audit_record_names_the_server_spans_trace(
    traced: tuple[TestClient, InMemorySpanExporter], services: Services, world: World
) -> None:
    client, exporter = traced
    response = add_note(client, world, {"X-Request-ID": "otel-2"})
    assert response.status_code == 200, response.text
    assert tracing._active is not None
    tracing._active.provider.force_flush()

    with services.db.reading() as session:
        row = session.scalars(
            select(AuditRecord).where(AuditRecord.client_request_id == "otel-2")
        ).one()
    assert row.trace_id is not None and row.trace_id != TRACE
    [server] = [s for s in finished(exporter, row.trace_id) if s.kind == SpanKind.SERVER]
    assert server.name.startswith("POST /api/v1/actions/")


class _Echo(BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("traceparent"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def test_httpx_calls_are_spans_of_the_current_trace(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    _client, exporter = traced
    server = HTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    assert tracing._active is not None
    # Work outside a request (a webhook delivery) makes the trace it continues current.
    parent = TraceParent(TRACE, "1111111111111111")
    try:
        with activated(parent), httpx.Client() as http:
            http.get(f"http://127.0.0.1:{server.server_port}/ping", timeout=5)
    finally:
        thread.join()
        server.server_close()
    tracing._active.provider.force_flush()

    trace_id = TRACE
    [call] = [s for s in finished(exporter, trace_id) if s.kind == SpanKind.CLIENT]
    sent = parse_traceparent(_Echo.seen[-1])
    assert sent is not None and sent.trace_id == trace_id
    assert call.context is not None and sent.span_id == f"{call.context.span_id:016x}"
    assert call.parent is not None and f"{call.parent.span_id:016x}" == parent.span_id


# --- through create_app, in a process of its own -------------------------------------------

_PROBE = """
import json, sys
from fastapi.testclient import TestClient
from opsgate.settings import Settings
from opsgate_demo.plugin import DEMO_POLICY
from opsgate.web.app import create_app

app = create_app(Settings(database_url=sys.argv[1], policy=DEMO_POLICY), configure_logs=False)
response = TestClient(app).get("/api/v1/healthz", headers={"traceparent": sys.argv[2]})
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry."))
if app.state.tracing is not None:
    app.state.tracing.shutdown()  # flushes the exporter
print(json.dumps({
    "status": response.status_code,
    "traceresponse": response.headers["traceresponse"],
    "sdk": any(m.startswith("opentelemetry.sdk") for m in loaded),
    "instrumentation": any(m.startswith("opentelemetry.instrumentation") for m in loaded),
}))
"""


def probe(test_db: TestDatabase, **otel: str) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | otel
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, test_db.url, TRACEPARENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(printed)


def test_off_imports_nothing_of_the_sdk(test_db: TestDatabase) -> None:
    result, printed = probe(test_db)
    assert result["status"] == 200
    assert (result["sdk"], result["instrumentation"]) == (False, False)
    assert result["traceresponse"].startswith(f"00-{TRACE}-")  # the trace is still continued
    assert '"trace_id": "0x' not in printed  # no span printed by any exporter


def test_on_by_environment_exports_the_request_and_its_sql(test_db: TestDatabase) -> None:
    result, printed = probe(test_db, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="og-test")
    assert result["status"] == 200
    assert (result["sdk"], result["instrumentation"]) == (True, True)
    assert result["traceresponse"].startswith(f"00-{TRACE}-")
    assert printed.count(f'"trace_id": "0x{TRACE}"') >= 2  # the request and SELECT 1
    assert '"service.name": "og-test"' in printed
    assert "SELECT 1" in printed
