"""W3C Trace Context: the trace a request belongs to, carried across every boundary.

The trace ID exists whether or not OpenTelemetry exports anything: it is taken from an
incoming `traceparent` header when well formed, else minted, and it goes on the audit record,
every log line, and every call to a backend. When OpenTelemetry is on (web/tracing.py), its
current span decides instead, so the IDs printed here are the ones the tracing backend shows.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")

_current: ContextVar[TraceParent | None] = ContextVar("opsgate_trace", default=None)
# Set by web/tracing.py while OpenTelemetry is on: makes a trace current for it as well.
_span_scope: Callable[[TraceParent], AbstractContextManager[object]] | None = None


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = "01"

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def is_trace_id(value: str) -> bool:
    """True for a valid W3C trace ID: 32 lowercase hex digits, not all zero."""
    return bool(_TRACE_ID.fullmatch(value)) and value != _INVALID_TRACE


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The parent named by a `traceparent` header, or None when it is absent or malformed
    (version ff, all-zero IDs and upper case are malformed, as the W3C spec says)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
        return None
    return TraceParent(trace_id, span_id, flags)


def continue_or_start(header: str | None) -> TraceParent:
    """This service's span in the caller's trace, or the root span of a new trace."""
    parent = parse_traceparent(header)
    trace_id = parent.trace_id if parent else new_trace_id()
    return TraceParent(trace_id, new_span_id(), parent.flags if parent else "01")


def activate(trace: TraceParent | None) -> None:
    """Make `trace` the current one for this context (request, thread or task)."""
    _current.set(trace)


@contextmanager
def activated(trace: TraceParent) -> Iterator[TraceParent]:
    """Make `trace` current for the block, then restore what was current before. For work
    outside a request (a CLI command, a background loop): one trace per unit of work. With
    OpenTelemetry on, its spans opened in the block (httpx calls, SQL) join `trace` too."""
    token = _current.set(trace)
    try:
        if _span_scope is None:
            yield trace
        else:
            with _span_scope(trace):
                yield trace
    finally:
        _current.reset(token)


def bridge(span_scope: Callable[[TraceParent], AbstractContextManager[object]] | None) -> None:
    """Let `activated` also enter `span_scope(trace)` (web/tracing.py, OpenTelemetry); None
    to stop."""
    global _span_scope
    _span_scope = span_scope


def current() -> TraceParent | None:
    return _current.get()


def current_trace_id() -> str | None:
    trace = _current.get()
    return trace.trace_id if trace else None


def outgoing_traceparent(trace_id: str | None = None) -> str:
    """A `traceparent` for a call made now: the current trace (or `trace_id`), a new span."""
    trace = _current.get()
    chosen = trace_id or (trace.trace_id if trace else new_trace_id())
    flags = trace.flags if trace else "01"
    return TraceParent(chosen, new_span_id(), flags).header()
