"""Prometheus metrics: what the control layer did, how long it took, and what is waiting.

Counters and histograms live in process memory and are recorded by the control layer through
the `observe_*` functions below. With `PROMETHEUS_MULTIPROC_DIR` set (read when this module is
first imported, as prometheus_client does), every process writes its values to files in that
directory and a scrape of any process sums them all (prometheus_client's multiprocess mode).

Anything that must be exact across processes is not counted in memory: the number of pending
approval requests is read from the database at scrape time (`PendingApprovals`).

Label values are bounded: actions are registered names or `unknown` (`action_label`), results
are problem codes or one of the accepted outcomes, so a caller cannot add time series at will.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.errors import OpsgateError, ProblemCode
from opsgate.core.integrations.backends import BackendOutcome
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest

if TYPE_CHECKING:
    from opsgate.core.actions.registry import Registry

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Fixed when prometheus_client is imported: it picks file-backed values only if this is set.
MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None

UNKNOWN = "unknown"
REPLAYED = "replayed"
# What `Gateway.submit` answers when it does not refuse (`ActionResult.status`, or a replay).
ACCEPTED_RESULTS = frozenset({"succeeded", "pending_approval", REPLAYED})
# An approved request that ran (`Approvals.execute`); otherwise the problem code that stopped it.
EXECUTION_RESULTS = frozenset({ApprovalStatus.SUCCEEDED.value})
DECISIONS = frozenset({ApprovalStatus.APPROVED.value, ApprovalStatus.REJECTED.value})
_PROBLEM_CODES = frozenset(code.value for code in ProblemCode)

ACTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AUDIT_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Time to decision is people's time: minutes to days.
DECISION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
                    259200.0, 604800.0)  # fmt: skip


# This process's metrics. In multiprocess mode their values go to files instead, and a scrape
# reads the files (the registry itself is then not exported).
_PROCESS = CollectorRegistry()
if MULTIPROCESS_DIR is None:
    ProcessCollector(registry=_PROCESS)

ACTIONS = Counter(
    "opsgate_actions",
    "Requests through Gateway.submit, by action and result (an outcome or a problem code).",
    ["action", "result"],
    registry=_PROCESS,
)
ACTION_SECONDS = Histogram(
    "opsgate_action_duration_seconds",
    "Wall time of Gateway.submit, by action and result.",
    ["action", "result"],
    buckets=ACTION_BUCKETS,
    registry=_PROCESS,
)
ACTIONS_IN_PROGRESS = Gauge(
    "opsgate_actions_in_progress",
    "Gateway.submit calls running now, summed over live processes.",
    registry=_PROCESS,
    multiprocess_mode="livesum",
)
EXECUTIONS = Counter(
    "opsgate_approved_executions",
    "Executions of approved requests, by action and result (succeeded or a problem code).",
    ["action", "result"],
    registry=_PROCESS,
)
DECISION_SECONDS = Histogram(
    "opsgate_approval_time_to_decision_seconds",
    "From request to final decision (approved at quorum, or rejected), by action.",
    ["action", "decision"],
    buckets=DECISION_BUCKETS,
    registry=_PROCESS,
)
BACKEND_CALLS = Counter(
    "opsgate_backend_calls",
    "Calls to remote backends, by backend, action and outcome.",
    ["backend", "action", "outcome"],
    registry=_PROCESS,
)
BACKEND_SECONDS = Histogram(
    "opsgate_backend_call_duration_seconds",
    "Wall time of calls to remote backends, by backend, action and outcome.",
    ["backend", "action", "outcome"],
    buckets=ACTION_BUCKETS,
    registry=_PROCESS,
)
AUDIT_APPEND_SECONDS = Histogram(
    "opsgate_audit_append_duration_seconds",
    "Time to chain one audit record, including the wait for the chain-head lock.",
    buckets=AUDIT_APPEND_BUCKETS,
    registry=_PROCESS,
)


def action_label(registry: Registry, action: str) -> str:
    """`action` if it is registered, else `unknown`: callers choose the names they send."""
    return action if registry.get(action) is not None else UNKNOWN


def result_of(exc: BaseException) -> str:
    """The result label of a refusal: its problem code; `internal_error` for anything else."""
    if isinstance(exc, OpsgateError):
        return exc.code.value
    return ProblemCode.INTERNAL_ERROR.value


def _bounded(result: str, accepted: frozenset[str]) -> str:
    return result if result in accepted or result in _PROBLEM_CODES else UNKNOWN


def action_in_progress() -> AbstractContextManager[None]:
    """Counts one running Gateway.submit while the block runs."""
    tracker: AbstractContextManager[None] = ACTIONS_IN_PROGRESS.track_inprogress()
    return tracker


def observe_action(action: str, result: str, seconds: float) -> None:
    """Count one Gateway.submit call and its duration. `action` must already be bounded
    (`action_label`); a result that is neither an outcome nor a problem code counts as
    `unknown`."""
    result = _bounded(result, ACCEPTED_RESULTS)
    ACTIONS.labels(action, result).inc()
    ACTION_SECONDS.labels(action, result).observe(seconds)


def observe_execution(action: str, result: str) -> None:
    """Count one execution of an approved request (`succeeded` or a problem code)."""
    EXECUTIONS.labels(action, _bounded(result, EXECUTION_RESULTS)).inc()


def observe_decision(action: str, decision: str, seconds_since_requested: float) -> None:
    """Record how long a request waited for its final decision (`approved` or `rejected`).
    Raise ValueError for any other decision."""
    if decision not in DECISIONS:
        raise ValueError(f"not a final decision: {decision!r}")
    # Processes' clocks may disagree by a little; a negative wait is a zero one.
    DECISION_SECONDS.labels(action, decision).observe(max(0.0, seconds_since_requested))


def observe_backend_call(
    backend: str, action: str, outcome: BackendOutcome | str, seconds: float
) -> None:
    """Count one call to a remote backend and its duration. Raise ValueError for an outcome
    that is not a BackendOutcome."""
    value = BackendOutcome(outcome).value
    BACKEND_CALLS.labels(backend, action, value).inc()
    BACKEND_SECONDS.labels(backend, action, value).observe(seconds)


def observe_audit_append(seconds: float) -> None:
    """Record the time one audit record took to chain (`audit_chain.append`)."""
    AUDIT_APPEND_SECONDS.observe(seconds)


class PendingApprovals:
    """`opsgate_approvals_pending{action}`, counted in the database at scrape time, so it is
    exact whichever process is scraped. Every registered action has a series (0 when none);
    requests for actions no longer registered count as `unknown`."""

    def __init__(self, db: Database, actions: Iterable[str]) -> None:
        self.db = db
        self.actions = frozenset(actions)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.actions, 0)
        with self.db.reading() as session:
            rows = session.execute(
                select(ApprovalRequest.action, func.count())
                .where(ApprovalRequest.status == ApprovalStatus.PENDING.value)
                .group_by(ApprovalRequest.action)
            )
            for action, n in rows:
                label = action if action in self.actions else UNKNOWN
                counts[label] = counts.get(label, 0) + int(n)
        return counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "opsgate_approvals_pending",
            "Approval requests waiting for a decision, by action (from the database).",
            labels=["action"],
        )
        for action, n in sorted(self.counts().items()):
            family.add_metric([action], n)
        yield family


def scrape(db: Database, actions: Iterable[str], accept: str | None = None) -> tuple[bytes, str]:
    """The exposition of every metric (all processes' in multiprocess mode) and its content
    type: OpenMetrics when `accept` asks for it, else the Prometheus text format."""
    registry = CollectorRegistry()
    if MULTIPROCESS_DIR is not None:
        # prometheus_client leaves these two functions unannotated.
        multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    else:
        registry.register(_PROCESS)
    registry.register(PendingApprovals(db, actions))
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


def mark_process_dead() -> None:
    """Drop this process's live gauges from the multiprocess directory (no-op otherwise).
    Call once when the process shuts down."""
    if MULTIPROCESS_DIR is not None:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
