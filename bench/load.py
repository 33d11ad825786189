"""The HTTP load driver and the statistics a benchmark reports.

`Driver` keeps one `httpx.Client` (one keep-alive connection) per simulated client. A `run`
starts one thread per client, releases them together, and lets them take request numbers from
a shared counter until `count` requests are done: a closed loop, each client sending its next
request when the previous one has answered. Latency is measured around each request with
`time.perf_counter`; throughput is requests over the wall time of the run.

A response other than 200, or a body the caller's `check` refuses, stops the run with a
BenchError: a benchmark that silently measures errors is worthless.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from bench import BenchError

REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Call:
    """One HTTP POST to send: path (on the server), JSON body already encoded, headers."""

    path: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """Something to measure: how to build request number `i`, and how to check its answer."""

    name: str
    call: Callable[[int], Call]
    # Given the parsed JSON of a 200 answer, return an error message, or None when it is right.
    check: Callable[[Any], str | None] = lambda _body: None
    # A hint added to the error for an unexpected status, e.g. {404: "is X enabled?"}.
    hints: Mapping[int, str] = field(default_factory=dict)


@dataclass
class RunResult:
    latencies: list[float]  # seconds, in completion order per client
    elapsed: float  # seconds of wall time for the whole run
    cpu: float | None = None  # CPU seconds the server process used during the run


class Driver:
    """`concurrency` simulated clients against `base_url` (127.0.0.1 only)."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not base_url.startswith("http://127.0.0.1:"):
            raise ValueError(f"benchmarks only talk to 127.0.0.1, not {base_url}")
        self.concurrency = concurrency
        # One client per worker; a run hands client i to thread i only, so no client is ever
        # used by two threads at once. trust_env=False: no proxy between us and the server.
        self._clients = [
            httpx.Client(
                base_url=base_url,
                trust_env=False,
                timeout=REQUEST_TIMEOUT_S,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            for _ in range(concurrency)
        ]

    def __enter__(self) -> Driver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def run(
        self,
        endpoint: Endpoint,
        count: int,
        *,
        deadline: float,
        cpu_probe: Callable[[], float | None] | None = None,
    ) -> RunResult:
        """Send `count` requests to `endpoint` with every client; stop at `deadline`
        (a `time.perf_counter` value) with a BenchError. `cpu_probe`, when given, returns the
        server's CPU seconds so far; the run records how much of it the requests used."""
        numbers = itertools.count()
        lock = threading.Lock()
        go = threading.Event()
        abort = threading.Event()
        latencies: list[list[float]] = [[] for _ in self._clients]
        errors: list[BaseException] = []

        def next_number() -> int | None:
            with lock:
                n = next(numbers)
            return n if n < count else None

        def work(index: int) -> None:
            client, mine = self._clients[index], latencies[index]
            go.wait()
            try:
                while not abort.is_set() and (n := next_number()) is not None:
                    if time.perf_counter() > deadline:
                        raise BenchError("the time budget ran out (raise --max-seconds?)")
                    call = endpoint.call(n)
                    started = time.perf_counter()
                    response = client.post(call.path, content=call.body, headers=call.headers)
                    mine.append(time.perf_counter() - started)
                    _check(endpoint, call, response)
            except BaseException as exc:
                errors.append(exc)
                abort.set()

        threads = [
            threading.Thread(target=work, args=(i,), name=f"bench-client-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        cpu_before = cpu_probe() if cpu_probe else None
        started = time.perf_counter()
        go.set()
        try:
            for thread in threads:
                thread.join(timeout=max(deadline - time.perf_counter(), 0) + REQUEST_TIMEOUT_S + 5)
        except BaseException:  # Ctrl-C: let the clients stop after their current request
            abort.set()
            raise
        elapsed = time.perf_counter() - started
        cpu_after = cpu_probe() if cpu_probe else None
        if errors:
            error = errors[0]
            if isinstance(error, BenchError):
                raise error
            raise BenchError(f"{endpoint.name}: {type(error).__name__}: {error}") from error
        if any(thread.is_alive() for thread in threads):
            raise BenchError(f"{endpoint.name}: a client thread did not finish in time")
        done = [x for per_client in latencies for x in per_client]
        if len(done) != count:
            raise BenchError(f"{endpoint.name}: {len(done)} of {count} requests completed")
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return RunResult(done, elapsed, cpu)


def _check(endpoint: Endpoint, call: Call, response: httpx.Response) -> None:
    if response.status_code != 200:
        hint = endpoint.hints.get(response.status_code)
        raise BenchError(
            f"{endpoint.name}: POST {call.path} answered {response.status_code}, not 200: "
            f"{response.text[:500]}" + (f"\n({hint})" if hint else "")
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise BenchError(f"{endpoint.name}: POST {call.path} answered non-JSON") from exc
    problem = endpoint.check(body)
    if problem:
        raise BenchError(f"{endpoint.name}: POST {call.path}: {problem}: {response.text[:500]}")


# --- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Stats:
    """Latency (milliseconds) and throughput (requests per second) of one endpoint."""

    requests: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput_rps: float
    # CPU milliseconds the server process spent per request: unlike latency, hardly moved by
    # other work on the machine. None where it cannot be read (no /proc).
    server_cpu_ms: float | None = None

    @classmethod
    def of(cls, runs: Sequence[RunResult]) -> Stats:
        latencies = [x for run in runs for x in run.latencies]
        if not latencies:
            raise BenchError("no requests were measured")
        elapsed = sum(run.elapsed for run in runs)
        cpu = [run.cpu for run in runs]
        return cls(
            requests=len(latencies),
            median_ms=statistics.median(latencies) * 1000,
            p95_ms=percentile(latencies, 0.95) * 1000,
            mean_ms=statistics.fmean(latencies) * 1000,
            min_ms=min(latencies) * 1000,
            max_ms=max(latencies) * 1000,
            throughput_rps=len(latencies) / elapsed if elapsed > 0 else float("nan"),
            server_cpu_ms=(
                None
                if any(c is None for c in cpu)
                else sum(c for c in cpu if c is not None) * 1000 / len(latencies)
            ),
        )


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal positive counts (fewer parts when total is small)."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def interleaved(
    driver: Driver,
    endpoints: Sequence[Endpoint],
    total: int,
    block: int,
    *,
    deadline: float,
    cpu_probe: Callable[[], float | None] | None = None,
) -> dict[str, Stats]:
    """Measure `total` requests per endpoint in blocks of about `block`, interleaving the
    endpoints round by round in ABBA order, so that drift (caches, WAL growth, autovacuum,
    another process on the machine) weighs on every endpoint alike."""
    runs: dict[str, list[RunResult]] = {e.name: [] for e in endpoints}
    sizes = split(total, max(1, round(total / max(block, 1))))
    for round_number, size in enumerate(sizes):
        order = endpoints if round_number % 2 == 0 else list(reversed(endpoints))
        for endpoint in order:
            result = driver.run(endpoint, size, deadline=deadline, cpu_probe=cpu_probe)
            runs[endpoint.name].append(result)
    return {name: Stats.of(results) for name, results in runs.items()}
