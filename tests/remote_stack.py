"""Opsgate and the demo ledger service as separate, real processes, for tests and benchmarks.

    ledger database ─ `opsgate demo ledger-service init --from <opsgate DB>` (same IDs)
    ledger process  ─ `opsgate demo ledger-service serve --port P` (OPSGATE_LEDGER_SECRET)
    integrations    ─ a TOML file binding payment.reverse and account.adjust_balance to it
    opsgate         ─ N `opsgate serve` processes (OPSGATE_INTEGRATIONS, the same secret)

Every process writes its JSON log lines to its own file. `TraceCollector` is a tiny OTLP/HTTP
receiver: processes started with `collector.env(name)` export their spans to it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RUN_ID, _pg_execute, _pg_url_for
from tests.servers import Server, free_port

LEDGER_SECRET = "remote-stack-ledger-secret-" + secrets.token_hex(16)
STARTUP_SECONDS = 30.0
REMOTE_ACTIONS = ("payment.reverse", "account.adjust_balance")


def opsgate_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "opsgate.cli", *args]


def run_cli(
    database_url: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`opsgate ARGS` against `database_url`, output captured; the caller checks the code."""
    environment = os.environ | {"OPSGATE_DATABASE_URL": database_url} | dict(env or {})
    return subprocess.run(
        opsgate_cli(*args),
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def init_ledger(source_url: str, ledger_url: str) -> None:
    """`opsgate demo ledger-service init --from SOURCE`: the ledger's money state, same IDs."""
    done = run_cli(
        source_url,
        "demo",
        "ledger-service",
        "init",
        "--from",
        source_url,
        "--database-url",
        ledger_url,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ledger-service init failed ({done.returncode}):\n{done.stderr}")


_ledger_databases = 0


@contextmanager
def ledger_database(backend: str, directory: Path) -> Iterator[str]:
    """An empty database for the ledger service, of the same backend as opsgate's: a SQLite
    file in `directory`, or a PostgreSQL database created (and dropped) for it."""
    global _ledger_databases
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'ledger.db'}"
        return
    _ledger_databases += 1
    name = f"og_{RUN_ID}_remote_ledger_{_ledger_databases}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url_for(name)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_integrations(
    path: Path,
    ledger_url: str,
    *,
    timeout_seconds: float = 5.0,
    max_attempts: int = 3,
    connect_timeout_seconds: float = 1.0,
    backoff_seconds: float = 0.05,
) -> Path:
    """An integrations file binding the money-moving actions to the ledger at `ledger_url`."""
    actions = ", ".join(f'"{name}"' for name in REMOTE_ACTIONS)
    path.write_text(
        "[backends.ledger]\n"
        f'url = "{ledger_url}"\n'
        f"actions = [{actions}]\n"
        'secret_env = "OPSGATE_LEDGER_SECRET"\n'
        f"connect_timeout_seconds = {connect_timeout_seconds}\n"
        f"timeout_seconds = {timeout_seconds}\n"
        f"max_attempts = {max_attempts}\n"
        f"backoff_seconds = {backoff_seconds}\n",
        encoding="utf-8",
    )
    return path


def _wait_healthy(server: Server, path: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.base_url} exited early:\n{server.log_path.read_text()}")
        try:
            if httpx.get(f"{server.base_url}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.base_url} did not start in time:\n{server.log_path.read_text()}")


def _spawn(command: list[str], env: Mapping[str, str], log_path: Path, port: int) -> Server:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=dict(env) | {"PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process, f"http://127.0.0.1:{port}", log_path)


@dataclass
class LedgerService:
    """The ledger service process; it can be stopped, frozen and started again on its port."""

    database_url: str
    log_path: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    server: Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LedgerService:
        """Start the process and wait until it answers."""
        server = self.spawn()
        _wait_healthy(server, "/healthz", time.monotonic() + STARTUP_SECONDS)
        return self

    def spawn(self) -> Server:
        """Start the process; `wait` for it later."""
        environment = (
            os.environ
            | {
                "OPSGATE_LEDGER_DATABASE_URL": self.database_url,
                "OPSGATE_LEDGER_SECRET": LEDGER_SECRET,
            }
            | self.env
        )
        command = opsgate_cli("demo", "ledger-service", "serve", "--port", str(self.port))
        self.server = _spawn(command, environment, self.log_path, self.port)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def log_lines(self) -> list[dict[str, Any]]:
        assert self.server is not None
        return self.server.log_lines()


@dataclass
class RemoteStack:
    """N `opsgate serve` processes on one database, and the ledger service they call."""

    database_url: str
    ledger: LedgerService
    integrations: Path
    env: dict[str, str]
    servers: list[Server] = field(default_factory=list)

    def opsgate_env(self) -> dict[str, str]:
        """What an `opsgate` process of this stack (server or CLI) needs in its environment."""
        return {
            "OPSGATE_DATABASE_URL": self.database_url,
            "OPSGATE_INTEGRATIONS": str(self.integrations),
            "OPSGATE_LEDGER_SECRET": LEDGER_SECRET,
        } | self.env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`opsgate ARGS` with this stack's database, integrations and secret."""
        return run_cli(self.database_url, *args, env=self.opsgate_env(), timeout=timeout)

    def start_opsgate(
        self, count: int, log_dir: Path, *, also_ledger: bool = False
    ) -> list[Server]:
        """Start `count` more `opsgate serve` processes at once (and the ledger, when asked)
        and wait until all answer."""
        ledger = [self.ledger.spawn()] if also_ledger else []
        started = []
        for n in range(count):
            port = free_port()
            log_path = log_dir / f"opsgate-{len(self.servers) + n}.log"
            command = opsgate_cli("serve", "--port", str(port))
            started.append(_spawn(command, os.environ | self.opsgate_env(), log_path, port))
        self.servers += started  # stopped by `stop`, even when one fails to start
        deadline = time.monotonic() + STARTUP_SECONDS
        for server in ledger:
            _wait_healthy(server, "/healthz", deadline)
        for server in started:
            _wait_healthy(server, "/api/v1/healthz", deadline)
        return started

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.ledger.stop()


@contextmanager
def remote_stack(
    opsgate_url: str,
    ledger_url: str,
    log_dir: Path,
    *,
    processes: int = 1,
    env: Mapping[str, str] | None = None,
    ledger_env: Mapping[str, str] | None = None,
    **integration_options: Any,
) -> Iterator[RemoteStack]:
    """The ledger service on `ledger_url` (initialised from `opsgate_url` first) and
    `processes` opsgate servers on `opsgate_url` calling it; everything stopped afterwards."""
    log_dir.mkdir(parents=True, exist_ok=True)
    init_ledger(opsgate_url, ledger_url)
    ledger = LedgerService(ledger_url, log_dir / "ledger.log", dict(ledger_env or {}))
    integrations = write_integrations(
        log_dir / "integrations.toml", ledger.base_url, **integration_options
    )
    # Console sessions must verify in every process: one signing key for all of them.
    console_key = {
        "OPSGATE_SECRET_KEY": secrets.token_urlsafe(48),
        "OPSGATE_SECRET_KEY_FILE": str(log_dir / "secret-key"),
    }
    stack = RemoteStack(opsgate_url, ledger, integrations, console_key | dict(env or {}))
    try:
        if processes:
            stack.start_opsgate(processes, log_dir, also_ledger=True)
        else:
            ledger.start()
        yield stack
    finally:
        stack.stop()


# --- OpenTelemetry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    attributes: Mapping[str, Any]


class TraceCollector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: accepts `POST /v1/traces` (protobuf) and
    keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                collector._receive(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TraceCollector:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self, service_name: str) -> dict[str, str]:
        """The OTEL_ variables that make a process export its spans here, soon."""
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{self.port}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": service_name,
        }

    def _receive(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ExportedSpan(
                            service=resource.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes={a.key: _any_value(a.value) for a in span.attributes},
                        )
                    )
        with self._lock:
            self.spans += received

    def of_trace(self, trace_id: str) -> list[ExportedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
