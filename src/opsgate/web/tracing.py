"""OpenTelemetry: spans for requests (FastAPI), SQL statements (SQLAlchemy) and outgoing HTTP
calls (httpx), exported where the standard `OTEL_` environment variables say.

Off unless those variables ask for it (see `enabled`). When off, nothing of the SDK or the
instrumentations is imported and a request pays only for parsing its `traceparent`
(core/tracing.py); the trace ID still reaches the logs and the audit record. When on, the
request's trace is the one of the OpenTelemetry server span, so the IDs in the logs and the
audit trail are the ones the tracing backend shows.

OpenTelemetry's instrumentation is process-wide (one provider, patched `httpx` clients and
`create_engine`), so one installation is active at a time: installing again replaces it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from starlette.datastructures import Headers
from starlette.types import Scope

from opsgate import __version__
from opsgate.core.request_ids import client_request_id, new_request_id
from opsgate.core.tracing import TraceParent, activate, bridge, continue_or_start

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "opsgate"
_OTLP_PROTOCOL = "http/protobuf"


class TracingConfigError(ValueError):
    """The OTEL_ variables ask for something opsgate cannot do (start-up fails)."""


@dataclass
class Tracing:
    """One active OpenTelemetry installation."""

    provider: TracerProvider
    app: FastAPI
    engine: Engine

    def shutdown(self) -> None:
        """Remove the instrumentation and flush and stop the exporters."""
        global _active
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        FastAPIInstrumentor.uninstrument_app(self.app)
        SQLAlchemyInstrumentor().uninstrument()
        HTTPXClientInstrumentor().uninstrument()
        self.provider.shutdown()
        if _active is self:
            _active = None
            bridge(None)


_active: Tracing | None = None


def _exporter_names(env: Mapping[str, str]) -> list[str] | None:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        return None
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    return [name for name in names if name != "none"]


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """True when the standard variables ask for traces: `OTEL_TRACES_EXPORTER` names an
    exporter other than `none`, or (it unset) an OTLP endpoint is set; never when
    `OTEL_SDK_DISABLED=true`. `OTEL_TRACES_EXPORTER=none` wins over an endpoint."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = _exporter_names(env)
    if names is not None:
        return bool(names)
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def exporters_from(env: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names (default `otlp`): `otlp` (OTLP over HTTP,
    configured by the OTEL_EXPORTER_OTLP_* variables) and `console`. Raise TracingConfigError
    for any other name, or an OTLP protocol other than http/protobuf."""
    env = os.environ if env is None else env
    exporters: list[SpanExporter] = []
    for name in _exporter_names(env) or ["otlp"]:
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or _OTLP_PROTOCOL
            ).strip()
            if protocol != _OTLP_PROTOCOL:
                raise TracingConfigError(
                    f"OTLP protocol {protocol!r} is not supported; opsgate exports traces "
                    f"over {_OTLP_PROTOCOL} (unset OTEL_EXPORTER_OTLP_PROTOCOL)"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER names {name!r}; opsgate supports otlp, console and none"
            )
    return exporters


def install(
    app: FastAPI,
    engine: Engine,
    exporters: Sequence[SpanExporter],
    *,
    service_name: str = DEFAULT_SERVICE_NAME,
    set_global: bool = True,
) -> Tracing:
    """Trace `app`'s requests, `engine`'s statements and every httpx client's calls, exporting
    through `exporters` (batched). Replaces the installation active before, if any."""
    global _active
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if _active is not None:
        _active.shutdown()
    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    # The ASGI "http send/receive" spans add nothing an operator reads; leave them out.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses unchanged;
    # tests/web/test_tracing.py proves the statement spans.
    SQLAlchemyInstrumentor().instrument(
        engine=engine, tracer_provider=provider, skip_dep_check=True
    )
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    _active = Tracing(provider, app, engine)
    bridge(_span_scope)
    log.info("opentelemetry tracing on: service %s, %d exporter(s)", service_name, len(exporters))
    return _active


def setup(app: FastAPI, engine: Engine, env: Mapping[str, str] | None = None) -> Tracing | None:
    """Install tracing when the environment asks for it (`enabled`); else do nothing and
    import nothing. Raise TracingConfigError on a setting opsgate cannot honour."""
    env = os.environ if env is None else env
    if not enabled(env):
        return None
    service_name = env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    return install(app, engine, exporters_from(env), service_name=service_name)


def _span_scope(parent: TraceParent) -> AbstractContextManager[object]:
    # Work outside a request (a webhook delivery, a reconciliation) made current with
    # core/tracing.activated: its spans become children of that trace, not roots of new ones.
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = SpanContext(
        int(parent.trace_id, 16),
        int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parent.flags, 16)),
    )
    return trace.use_span(NonRecordingSpan(context), end_on_exit=False)


def span_trace() -> TraceParent | None:
    """The current OpenTelemetry span as a TraceParent, or None when tracing is off or no
    span is active."""
    if _active is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return TraceParent(
        f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{int(context.trace_flags):02x}"
    )


def request_trace(traceparent: str | None) -> TraceParent:
    """The trace of an incoming request: the OpenTelemetry server span's when tracing is on
    (it already continued `traceparent`), else the caller's trace continued or a new one."""
    return span_trace() or continue_or_start(traceparent)


def open_request(scope: Scope, **context: Any) -> tuple[str, TraceParent]:
    """Start an HTTP request's context, for any opsgate service's outermost middleware: a
    new request ID (never the caller's), the caller's well-formed `X-Request-ID` kept as
    `client_request_id`, and its trace (`request_trace`), made current, kept in the scope's
    state, and bound with `context` to every log line of the request (and, when tracing is
    on, set on the server span)."""
    headers = Headers(scope=scope)
    request_id = new_request_id()
    client_id = client_request_id(headers.get("x-request-id"))
    trace = request_trace(headers.get("traceparent"))
    activate(trace)
    state: dict[str, Any] = scope.setdefault("state", {})
    state["request_id"] = request_id
    state["client_request_id"] = client_id
    state["trace_id"] = trace.trace_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        **context, request_id=request_id, trace_id=trace.trace_id, span_id=trace.span_id
    )
    if client_id is not None:
        structlog.contextvars.bind_contextvars(client_request_id=client_id)
    _annotate_span(request_id, client_id)
    return request_id, trace


def _annotate_span(request_id: str, client_id: str | None) -> None:
    if _active is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute("opsgate.request_id", request_id)
    if client_id is not None:
        span.set_attribute("opsgate.client_request_id", client_id)
