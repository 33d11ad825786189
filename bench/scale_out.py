"""Scale-out: throughput with 1, 2 and 3 `opsgate serve` processes on one PostgreSQL.

Every process is stateless (docs/operations.md, "Many processes"), so adding processes should
add throughput until something shared runs out: CPU cores, PostgreSQL, the audit chain's head
lock (every audited write takes it just before it commits), or the remote backend. Two
workloads, so the report separates the control layer's own scaling from the ledger round trip:

  payment.reverse   ledger service (`opsgate demo ledger-service serve`, its own PostgreSQL
                    database, initialised from opsgate's): bound to it by an integrations
                    file, so each request is the control layer's two transactions around a
                    signed HTTP call to the ledger, which runs the reversal in a third.
                    100 minor units (below the approval threshold), a fresh Idempotency-Key
                    each, spread over every reversible payment and the five operators.
  customer.add_note in-process: the control layer's own path (one transaction, no call).

For N = 1, 2, 3: start N processes (on the same database, with the same policy and
integrations file), warm up, then CLIENTS closed-loop clients (threads with one keep-alive
connection each, client i talking to process i mod N) send `--requests` requests per
workload. Reported: requests/s, p50/p95 latency, the speed-up over one process, and the CPU
each part used during the measured run (from /proc: the opsgate processes, the ledger
service, PostgreSQL's processes, this client process, and the machine), in cores busy.

PostgreSQL only: processes on one SQLite file take turns at its single writer lock.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from rich.console import Console
from sqlalchemy.engine import make_url

from bench import BenchError
from bench.load import percentile
from bench.payment_reverse import OPERATORS, policy_without_hourly_limit, reversible_payments
from bench.scenarios import Measurement, Settings, StandaloneScenario, register
from bench.servers import (
    LOCALHOST,
    STARTUP_TIMEOUT_S,
    BenchDatabase,
    Server,
    free_port,
    migrate_and_seed,
    opsgate_command,
    postgresql_database,
    process_cpu_seconds,
    run_cli,
    serve,
)
from opsgate_demo.plugin import DEMO_POLICY

PROCESS_COUNTS = (1, 2, 3)
CLIENTS = 12
REQUEST_TIMEOUT_S = 60.0
AMOUNT_MINOR = 100
NOTE_CUSTOMERS = 50
TABLE = (
    f"scale_out: N opsgate processes + the ledger service on one PostgreSQL, {CLIENTS} clients "
    "(target: ≥ 1.6× at 2 processes)"
)
SPEED_UP_TARGET = 1.6  # on two cores, at two processes (issue 7)


# --- the ledger service ------------------------------------------------------------------


@contextmanager
def ledger_service(
    opsgate_url: str, ledger: BenchDatabase, secret: str, log_path: Path
) -> Iterator[Server]:
    """`opsgate demo ledger-service init --from <opsgate DB>`, then `serve` on a free port until
    the block ends."""
    run_cli(
        opsgate_url,
        "demo",
        "ledger-service",
        "init",
        "--from",
        opsgate_url,
        "--database-url",
        ledger.url,
    )
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"OPSGATE_LEDGER_DATABASE_URL": ledger.url, "OPSGATE_LEDGER_SECRET": secret}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *opsgate_command(),
                "ledger-service",
                "serve",
                "--host",
                LOCALHOST,
                "--port",
                str(port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://{LOCALHOST}:{port}", log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            server.check_alive()
            try:
                if httpx.get(f"{server.base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the ledger service did not start:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


# --- CPU accounting (Linux /proc) ----------------------------------------------------------


def postgres_pids(admin_url: str, databases: tuple[str, ...]) -> list[int]:
    """PostgreSQL's processes working for us: the backends connected to `databases` and the
    cluster's WAL writer, background writer and checkpointer (not other databases' backends:
    other work on a shared server must not count as ours)."""
    import psycopg

    url = make_url(admin_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE (datname = ANY(%s) OR backend_type IN "
            "('walwriter', 'background writer', 'checkpointer')) AND pid <> pg_backend_pid()",
            (list(databases),),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy (not idle or waiting) since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
    except (OSError, ValueError, IndexError):
        return None
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuProbe:
    """CPU seconds per part of the set-up, per process, read before and after a run. A
    process that appears meanwhile counts from its start; one that exits, not at all."""

    parts: Mapping[str, list[int]]
    postgres: Callable[[], list[int]]

    def read(self) -> dict[str, dict[int, float]]:
        parts = dict(self.parts) | {"postgres": self.postgres()}
        sample = {
            name: {pid: process_cpu_seconds(pid) or 0.0 for pid in pids}
            for name, pids in parts.items()
        }
        sample["machine"] = {0: machine_busy_seconds() or 0.0}
        return sample

    @staticmethod
    def used(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        """CPU seconds used between two readings, per part."""
        return {
            name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }


# --- the load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    requests: int
    elapsed: float
    latencies: list[float]
    cores_busy: dict[str, float]  # CPU seconds / wall seconds, per part
    pg_waits: dict[str, float] = field(default_factory=dict)  # average backends per state

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p95_ms(self) -> float:
        return percentile(self.latencies, 0.95) * 1000


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    path: str
    body: Callable[[int], bytes]
    headers: Callable[[int], dict[str, str]]


def drive(
    urls: list[str], workload: Workload, first: int, count: int, deadline: float, cpu: CpuProbe
) -> Run:
    """CLIENTS closed-loop clients, client i on urls[i mod N], until `count` requests (numbered
    from `first`) have answered 200 `succeeded`; anything else stops the benchmark."""
    numbers = itertools.count(first)
    lock = threading.Lock()
    go = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[str] = []
    clients = [
        httpx.Client(
            base_url=urls[i % len(urls)],
            trust_env=False,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for i in range(CLIENTS)
    ]

    def work(index: int) -> None:
        go.wait()
        while not errors:
            with lock:
                n = next(numbers)
            if n >= first + count:
                return
            if time.perf_counter() > deadline:
                errors.append("the time budget ran out (raise --max-seconds?)")
                return
            started = time.perf_counter()
            try:
                response = clients[index].post(
                    workload.path, content=workload.body(n), headers=workload.headers(n)
                )
            except httpx.HTTPError as exc:
                errors.append(f"{workload.name}: {type(exc).__name__}: {exc}")
                return
            latencies[index].append(time.perf_counter() - started)
            if response.status_code != 200 or b'"status":"succeeded"' not in response.content:
                errors.append(
                    f"{workload.name}: POST {workload.path} answered {response.status_code}: "
                    f"{response.text[:300]}"
                )

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        before = cpu.read()
        started = time.perf_counter()
        go.set()
        for thread in threads:
            thread.join(timeout=max(deadline - time.perf_counter(), 0) + REQUEST_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        after = cpu.read()
    finally:
        for client in clients:
            client.close()
    if errors:
        raise BenchError(errors[0])
    done = [x for per_client in latencies for x in per_client]
    if len(done) != count:
        raise BenchError(f"{workload.name}: {len(done)} of {count} requests completed")
    busy = {name: used / elapsed for name, used in CpuProbe.used(before, after).items()}
    ours = ("opsgate", "ledger", "postgres", "clients")
    busy["other"] = max(0.0, busy["machine"] - sum(busy[name] for name in ours))
    return Run(count, elapsed, done, busy)


def workloads(
    payments: list[str], customers: tuple[str, ...], tokens: Mapping[str, str]
) -> list[Workload]:
    run = secrets.token_hex(4)  # Idempotency-Keys never repeat, across runs too
    operators = [tokens[name] for name in OPERATORS]

    def reverse_body(i: int) -> bytes:
        payment = payments[i % len(payments)]
        return json.dumps(
            {
                "target": f"payment:{payment}",
                "payload": {"amount_minor": AMOUNT_MINOR, "reason_code": "duplicate_charge"},
                "reason": f"benchmark: scale-out, ticket ZD-{i:06d}",
            }
        ).encode()

    def reverse_headers(i: int) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {operators[i % len(operators)]}",
            "Idempotency-Key": f"scale-{run}-{i}",
        }

    def note_body(i: int) -> bytes:
        customer = customers[i % len(customers)]
        return json.dumps(
            {
                "target": f"customer:{customer}",
                "payload": {"text": f"scale-out note {i}"},
                "reason": "benchmark: scale-out",
            }
        ).encode()

    def note_headers(_i: int) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {tokens['alice']}"}

    return [
        Workload(
            "payment.reverse",
            "payment.reverse (ledger service)",
            "/api/v1/actions/payment.reverse",
            reverse_body,
            reverse_headers,
        ),
        Workload(
            "customer.add_note",
            "customer.add_note (in-process)",
            "/api/v1/actions/customer.add_note",
            note_body,
            note_headers,
        ),
    ]


def _cores(busy: Mapping[str, float]) -> str:
    order = ("opsgate", "ledger", "postgres", "clients", "other", "machine")
    return " / ".join(f"{busy.get(name, 0.0):.2f}" for name in order)


def _waits(waits: Mapping[str, float]) -> str:
    return " / ".join(f"{waits.get(name, 0.0):.1f}" for name in ("lock", "wal", "running"))


class WaitSampler:
    """Samples, every 20 ms, what opsgate's PostgreSQL backends are doing: waiting for a
    lock (row locks: the audit chain head, targets, keys), for the WAL (a commit's flush), or
    running. The averages say how many backends were in each state during the run."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._stop = threading.Event()
        self._counts: dict[str, int] = {"lock": 0, "wal": 0, "running": 0}
        self._samples = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def averages(self) -> dict[str, float]:
        return {name: n / max(self._samples, 1) for name, n in self._counts.items()}

    def _sample(self) -> None:
        import psycopg

        url = make_url(self._url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as c:
            while not self._stop.wait(0.02):
                rows = c.execute(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND state = 'active' "
                    "AND pid <> pg_backend_pid()"
                ).fetchall()
                self._samples += 1
                for kind, event in rows:
                    if kind == "Lock":
                        self._counts["lock"] += 1
                    elif (kind, event) in (
                        ("IO", "WALSync"),
                        ("IO", "WALWrite"),
                        ("LWLock", "WALWrite"),
                    ):
                        self._counts["wal"] += 1
                    elif kind is None:
                        self._counts["running"] += 1


@register
class ScaleOut(StandaloneScenario):
    name = "scale_out"
    databases: tuple[str, ...] = ()  # opsgate's and the ledger's, while running
    description = (
        "payment.reverse through the ledger service and customer.add_note in-process, with "
        f"1, 2 and 3 opsgate processes on one PostgreSQL, {CLIENTS} clients (PostgreSQL only)"
    )

    def notes(self, settings: Settings) -> list[str]:
        cpus = os.cpu_count() or 1
        return [
            f"scale_out: {CLIENTS} closed-loop clients, {settings.requests} measured requests per "
            f"workload and process count after {settings.warmup} warm-up requests; the "
            f"opsgate processes, the ledger service, PostgreSQL and the clients all share this "
            f"machine's {cpus} CPU(s). 'CPU cores busy' is CPU seconds per wall second during the "
            "measured run: opsgate (all N processes) / ledger / postgres / clients (this "
            "process) / other (everything else on the machine) / all. 'pg backends' is the "
            "average number of opsgate's PostgreSQL backends waiting for a lock, waiting for "
            "the WAL (commit flush), or running, sampled every 20 ms. Policy: the demo policy with "
            "hourly_reversal_count off, as in payment_reverse."
        ]

    def run(self, settings: Settings, backend: str, console: Console) -> list[Measurement]:
        if backend != "postgresql":
            console.print("    skipped: scale-out is measured on PostgreSQL only")
            return []
        with ExitStack() as stack:
            opsgate_db = stack.enter_context(postgresql_database())
            ledger_db = stack.enter_context(postgresql_database())
            self.databases = tuple(str(make_url(db.url).database) for db in (opsgate_db, ledger_db))
            console.print(f"    databases {opsgate_db.label}, {ledger_db.label}: seeding")
            seeded = migrate_and_seed(opsgate_db.url, usernames=OPERATORS)
            planned = len(PROCESS_COUNTS) * (settings.warmup + settings.requests)
            payments = reversible_payments(opsgate_db.url, planned)
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="og-scale-")))
            secret = secrets.token_urlsafe(32)
            ledger = stack.enter_context(
                ledger_service(
                    opsgate_db.url, ledger_db, secret, settings.results_dir / "ledger-scale_out.log"
                )
            )
            env = self._opsgate_env(directory, ledger.base_url, secret)
            loads = workloads(payments, seeded.customer_ids[:NOTE_CUSTOMERS], seeded.tokens)
            rows = self._measure(settings, opsgate_db, ledger, env, loads, console)
        return rows

    @staticmethod
    def _opsgate_env(directory: Path, ledger_url: str, secret: str) -> dict[str, str]:
        policy = directory / "policy.toml"
        policy.write_text(policy_without_hourly_limit(DEMO_POLICY.read_text(encoding="utf-8")))
        integrations = directory / "integrations.toml"
        integrations.write_text(
            "[backends.ledger]\n"
            f'url = "{ledger_url}"\n'
            'actions = ["payment.reverse", "account.adjust_balance"]\n'
            'secret_env = "OPSGATE_LEDGER_SECRET"\n'
            "timeout_seconds = 30\n"
        )
        return {
            "OPSGATE_POLICY": str(policy),
            "OPSGATE_INTEGRATIONS": str(integrations),
            "OPSGATE_LEDGER_SECRET": secret,
            "OPSGATE_WEBHOOK_DELIVERY": "false",
        }

    def _measure(
        self,
        settings: Settings,
        database: BenchDatabase,
        ledger: Server,
        env: dict[str, str],
        loads: list[Workload],
        console: Console,
    ) -> list[Measurement]:
        rows: list[Measurement] = []
        baseline: dict[str, float] = {}
        first = 0
        for count in PROCESS_COUNTS:
            with ExitStack() as servers:
                started = [
                    servers.enter_context(
                        serve(
                            database.url,
                            settings.results_dir / f"server-scale_out-{count}-{n}.log",
                            env=env,
                        )
                    )
                    for n in range(count)
                ]
                pids = {
                    "opsgate": [server.process.pid for server in started],
                    "ledger": [ledger.process.pid],
                    "clients": [os.getpid()],
                }
                cpu = CpuProbe(pids, lambda: postgres_pids(database.url, self.databases))
                urls = [server.base_url for server in started]
                for load in loads:
                    drive(urls, load, first, settings.warmup, settings.deadline, cpu)
                    first += settings.warmup
                    with WaitSampler(database.url) as waits:
                        measured = drive(
                            urls, load, first, settings.requests, settings.deadline, cpu
                        )
                    measured = replace(measured, pg_waits=waits.averages())
                    first += settings.requests
                    for server in (*started, ledger):
                        server.check_alive()
                    baseline.setdefault(load.name, measured.throughput)
                    rows.append(self._row(load, count, measured, baseline[load.name]))
                    console.print(
                        f"    {load.label}, {count} process(es): "
                        f"{measured.throughput:.1f} req/s, p50 {measured.p50_ms:.1f} ms, "
                        f"p95 {measured.p95_ms:.1f} ms, cores busy {_cores(measured.cores_busy)}"
                        f", PostgreSQL backends lock/wal/running {_waits(measured.pg_waits)}"
                    )
        return rows

    def _row(self, load: Workload, count: int, run: Run, baseline: float) -> Measurement:
        speed_up = run.throughput / baseline
        return Measurement(
            scenario=self.name,
            table=TABLE,
            backend="postgresql",
            columns=(
                ("workload", load.label),
                ("processes", str(count)),
                ("req/s", f"{run.throughput:.1f}"),
                ("p50 ms", f"{run.p50_ms:.1f}"),
                ("p95 ms", f"{run.p95_ms:.1f}"),
                ("speed-up", f"{speed_up:.2f}×"),
                ("CPU cores busy: opsgate/\nledger/pg/clients/other/all", _cores(run.cores_busy)),
                ("pg backends\nlock/wal/run", _waits(run.pg_waits)),
            ),
            ratio=speed_up,
            target_ratio=1.0 if count == 1 else SPEED_UP_TARGET,
            at_least=True,
            data={
                "workload": load.name,
                "processes": count,
                "clients": CLIENTS,
                "requests": run.requests,
                "elapsed_s": run.elapsed,
                "throughput_rps": run.throughput,
                "p50_ms": run.p50_ms,
                "p95_ms": run.p95_ms,
                "speed_up": speed_up,
                "cores_busy": run.cores_busy,
                "pg_backends_waiting": run.pg_waits,
                "cpus": os.cpu_count(),
            },
        )
