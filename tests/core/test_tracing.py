"""W3C Trace Context helpers (core/tracing.py): parsing, continuing, the current trace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from opsgate.core import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_traceparent_is_parsed() -> None:
    parent = tracing.parse_traceparent(VALID)
    assert parent == tracing.TraceParent(TRACE, SPAN, "01")
    assert parent.header() == VALID


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case
        f"ff-{TRACE}-{SPAN}-01",  # forbidden version
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace ID
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent ID
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace ID
        f"00-{TRACE}-{SPAN}-01-extra",
    ],
)
def test_a_malformed_traceparent_is_refused(header: str | None) -> None:
    assert tracing.parse_traceparent(header) is None


def test_continue_keeps_the_callers_trace_with_a_span_of_our_own() -> None:
    trace = tracing.continue_or_start(f"00-{TRACE}-{SPAN}-00")
    assert trace.trace_id == TRACE
    assert trace.span_id != SPAN
    assert trace.flags == "00"  # the caller's sampling decision is kept


def test_malformed_or_missing_parent_starts_a_new_trace() -> None:
    first = tracing.continue_or_start(f"00-{TRACE.upper()}-{SPAN}-01")
    second = tracing.continue_or_start(None)
    for trace in (first, second):
        assert tracing.is_trace_id(trace.trace_id)
        assert trace.trace_id != TRACE.upper().lower()
    assert first.trace_id != second.trace_id


def test_is_trace_id() -> None:
    assert tracing.is_trace_id(TRACE)
    assert not tracing.is_trace_id("0" * 32)
    assert not tracing.is_trace_id(TRACE.upper())
    assert not tracing.is_trace_id(TRACE[:-1])
    assert not tracing.is_trace_id("req_" + TRACE[:28])


def test_activated_is_current_only_inside_the_block() -> None:
    outer = tracing.continue_or_start(None)
    inner = tracing.continue_or_start(None)
    with tracing.activated(outer):
        with tracing.activated(inner):
            assert tracing.current() == inner
        assert tracing.current_trace_id() == outer.trace_id
    assert tracing.current() != outer


def test_outgoing_traceparent_continues_the_current_trace_with_a_new_span() -> None:
    trace = tracing.continue_or_start(VALID)
    with tracing.activated(trace):
        sent = tracing.parse_traceparent(tracing.outgoing_traceparent())
    assert sent is not None
    assert sent.trace_id == TRACE
    assert sent.span_id not in (SPAN, trace.span_id)


def test_outgoing_traceparent_without_a_current_trace_starts_one() -> None:
    def call() -> None:
        # A fresh thread starts with an empty context: no current trace.
        assert tracing.current() is None
        sent = tracing.parse_traceparent(tracing.outgoing_traceparent())
        assert sent is not None
        results.append(sent.trace_id)

    results: list[str] = []
    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert len(results) == 1
    assert tracing.is_trace_id(results[0])


def test_outgoing_traceparent_for_a_named_trace() -> None:
    sent = tracing.parse_traceparent(tracing.outgoing_traceparent(TRACE))
    assert sent is not None
    assert sent.trace_id == TRACE


def test_activated_also_enters_the_bridged_span_scope_and_leaves_it() -> None:
    seen: list[str] = []

    @contextmanager
    def scope(trace: tracing.TraceParent) -> Iterator[None]:
        seen.append(f"enter {trace.trace_id}")
        yield
        seen.append("exit")

    tracing.bridge(scope)
    try:
        with tracing.activated(tracing.TraceParent(TRACE, SPAN)):
            seen.append("work")
    finally:
        tracing.bridge(None)
    with tracing.activated(tracing.TraceParent(TRACE, SPAN)):
        seen.append("unbridged")
    assert seen == [f"enter {TRACE}", "work", "exit", "unbridged"]
