"""The audit trail at scale: search, append and verify over a million records.

On each backend this scenario creates two databases of its own (`opsgate db upgrade`, then
`bench.audit_data.load`): one with `--audit-records` records (default 1,000,000) and one with
10,000, both generated realistically with their real hash chain. Then:

a. search: for each filter of `core.audit_search.search` (actor, action, target, request ID,
   approval ID, result, time range, free text in the reason), the first page (50, newest
   first) for ~50 varied values, against the same query written by hand
   (`SELECT * FROM audit_records WHERE <filter> ORDER BY seq DESC LIMIT 51`) through the same
   engine; both open a session/connection per query, as a request does. Every page is checked
   to hold the same records both ways. The two run alternately (ABBA) so drift hits both;
   statements per call are counted and the query plans of both are kept (EXPLAIN), in the JSON.
b. append: `core.audit.record` in a write session + commit, ~300 times at the large size and
   300 times at 10,000 records, interleaved in blocks (ABBA). Appends read the chain head,
   never the table, so the size must not matter.
c. verify: `core.audit_chain.verify` over the whole chain (records/s), against a plain loop
   that reads the same rows in `seq` order in the same batches and hashes them (SHA-256 over
   the same canonical JSON), checking the same links.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from sqlalchemy import Engine, TextClause, bindparam, event, text

from bench import BenchError
from bench.audit_data import Loaded, load
from bench.load import percentile
from bench.scenarios import (
    Measurement,
    Result,
    Settings,
    StandaloneScenario,
    register,
)
from bench.servers import PROVISIONERS, BenchDatabase, run_cli
from opsgate.core.audit.chain import GENESIS, HASHED_FIELDS, HEAD_ID, verify
from opsgate.core.audit.records import AuditEntry, AuditResult, record
from opsgate.core.audit.search import AuditFilter, search
from opsgate.core.canonical import canonical_json
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.request_ids import new_request_id
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord

SMALL_RECORDS = 10_000
PAGE = 50
SEARCH_RUNS = 50
SEARCH_WARMUP = 4
APPENDS = 300
APPEND_WARMUP = 20
APPEND_BLOCK = 25
VERIFY_BATCH = 2000  # what audit_chain.verify reads per statement
SEARCH_TARGET = 1.5
APPEND_TARGET = 1.1
VERIFY_TARGET = 0.7
JSON_FIELDS = frozenset({"actor_roles", "parameters", "before", "after", "outcome", "flags"})
COMMON_WORDS = (
    "duplicate", "chargeback", "customer", "fraud", "überprüfung", "kyc", "goodwill",
    "reconciliation", "regulator", "new device", "dossier", "settlement",
)  # fmt: skip
RARE_SHARE = 0.2  # of text searches look for a ticket number: a few hits in the whole table


@dataclass
class Filled:
    """A database with a generated audit trail, and an opsgate Database on it."""

    database: BenchDatabase
    loaded: Loaded
    db: Database


@contextmanager
def filled(
    backend: str, records: int, settings: Settings, console: Console, end: datetime
) -> Iterator[Filled]:
    with PROVISIONERS[backend]() as database:
        run_cli(database.url, "db", "upgrade")
        step = max(records // 4, 1)
        done = [0]
        started = time.perf_counter()

        def progress(count: int) -> None:
            before, done[0] = done[0], done[0] + count
            if done[0] // step != before // step and done[0] < records:
                rate = done[0] / (time.perf_counter() - started)
                console.print(f"    {done[0]:,} of {records:,} ({rate:,.0f} records/s)")

        console.print(f"  {database.label}: generating and loading {records:,} audit records")
        loaded = load(
            database.url,
            backend,
            records,
            deadline=settings.deadline,
            end=end,
            progress=progress if records >= 100_000 else None,
        )
        console.print(
            f"    {records:,} records in {loaded.seconds:.0f} s "
            f"({records / loaded.seconds:,.0f} records/s, hash chain included)"
        )
        db = Database(database.url)
        try:
            yield Filled(database, loaded, db)
        finally:
            db.dispose()


class Statements:
    """Counts (and keeps) the statements an engine sends while the block runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sent: list[tuple[str, Any]] = []

    def _seen(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.sent.append((statement, parameters))

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)

    @property
    def count(self) -> int:
        return len(self.sent)

    def selects(self) -> list[tuple[str, Any]]:
        return [(s, p) for s, p in self.sent if s.lstrip().upper().startswith("SELECT")]


def _ms_stats(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(seconds) * 1000,
        "p95_ms": percentile(seconds, 0.95) * 1000,
        "mean_ms": statistics.fmean(seconds) * 1000,
        "min_ms": min(seconds) * 1000,
        "max_ms": max(seconds) * 1000,
        "runs": len(seconds),
    }


def _check_deadline(settings: Settings) -> None:
    if time.perf_counter() > settings.deadline:
        raise BenchError("the time budget ran out (raise --max-seconds?)")


# --- a. search ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterCase:
    """One filter of the search: its values, as an AuditFilter and as hand-written SQL."""

    name: str
    where: str  # the WHERE clause of the hand-written query
    values: list[Any]
    as_filter: Callable[[Any], AuditFilter]
    as_params: Callable[[Any], dict[str, Any]]
    typed: tuple[str, ...] = ()  # parameters bound with the occurred_at column's type

    def statement(self) -> TextClause:
        sql = text(f"SELECT * FROM audit_records WHERE {self.where} ORDER BY seq DESC LIMIT :n")
        column_type = AuditRecord.__table__.c.occurred_at.type
        return sql.bindparams(*(bindparam(name, type_=column_type) for name in self.typed))


def _like_pattern(words: str) -> str:
    """What `contains(..., autoescape=True)` matches: the text anywhere, `/` escaping."""
    escaped = words.lower().replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


def filter_cases(loaded: Loaded, rng: random.Random) -> list[FilterCase]:
    count = SEARCH_RUNS + SEARCH_WARMUP
    sample, pop = loaded.sample, loaded.population
    if not sample.request_ids or not sample.approval_ids or not sample.tickets:
        raise BenchError("the generated audit trail is too small to sample search values from")
    assert sample.first is not None and sample.last is not None
    first, span = sample.first, sample.last - sample.first
    widths = (timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=30))

    def time_range() -> tuple[datetime, datetime]:
        width = min(rng.choice(widths), span)
        since = first + (span - width) * rng.random()
        return since, since + width

    def words() -> str:
        if rng.random() < RARE_SHARE:
            return rng.choice(sample.tickets)
        return rng.choice(COMMON_WORDS)

    actions, results = sorted(sample.actions), sorted(sample.results)
    targets = pop.targets
    return [
        FilterCase(
            "actor",
            "actor_id = :v",
            [rng.choice(pop.people).id for _ in range(count)],
            lambda v: AuditFilter(actor=v),
            lambda v: {"v": v},
        ),
        FilterCase(
            "action",
            "action = :v",
            [rng.choice(actions) for _ in range(count)],
            lambda v: AuditFilter(action=v),
            lambda v: {"v": v},
        ),
        FilterCase(
            "target",
            "target = :v",
            [rng.choice(targets) for _ in range(count)],
            lambda v: AuditFilter(target=v),
            lambda v: {"v": v},
        ),
        FilterCase(
            "request_id",
            "(request_id = :v OR execution_request_id = :v)",
            [rng.choice(sample.request_ids) for _ in range(count)],
            lambda v: AuditFilter(request_id=v),
            lambda v: {"v": v},
        ),
        FilterCase(
            "approval_id",
            "approval_id = :v",
            [rng.choice(sample.approval_ids) for _ in range(count)],
            lambda v: AuditFilter(approval_id=v),
            lambda v: {"v": v},
        ),
        FilterCase(
            "result",
            "result = :v",
            [rng.choice(results) for _ in range(count)],
            lambda v: AuditFilter(result=v),
            lambda v: {"v": v},
        ),
        FilterCase(
            "time range",
            "occurred_at >= :since AND occurred_at < :until",
            [time_range() for _ in range(count)],
            lambda v: AuditFilter(since=v[0], until=v[1]),
            lambda v: {"since": v[0], "until": v[1]},
            typed=("since", "until"),
        ),
        FilterCase(
            "text (reason)",
            "lower(reason) LIKE :pattern ESCAPE '/'",
            [words() for _ in range(count)],
            lambda v: AuditFilter(text=v),
            lambda v: {"pattern": _like_pattern(v)},
        ),
    ]


def _decode_seconds(rows: list[Any]) -> float:
    """How long decoding the JSON columns of hand-fetched rows takes (what search's JSON
    type does for it): json.loads of every JSON column the driver left as text."""
    started = time.perf_counter()
    for row in rows:
        for value in (getattr(row, name) for name in JSON_FIELDS):
            if isinstance(value, str):
                json.loads(value)
    return time.perf_counter() - started


def _explain(engine: Engine, backend: str, statement: str, parameters: Any) -> dict[str, str]:
    """The plan of one driver-level statement: the shape (for comparing) and, on
    PostgreSQL, EXPLAIN ANALYZE with buffers."""
    with engine.connect() as conn:
        if backend == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            shape = "\n".join(str(row[-1]) for row in rows)
            return {"plan": shape}
        shape = "\n".join(
            row[0] for row in conn.exec_driver_sql(f"EXPLAIN (COSTS OFF) {statement}", parameters)
        )
        analyzed = "\n".join(
            row[0]
            for row in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
        )
        return {"plan": shape, "analyze": analyzed}


def search_rows(
    big: Filled, backend: str, settings: Settings, console: Console
) -> list[Measurement]:
    db, engine = big.db, big.db.engine
    records = big.loaded.records
    rng = random.Random(11)
    out = []

    statements: dict[str, TextClause] = {}

    def by_search(case: FilterCase, value: Any) -> tuple[list[int], list[Any]]:
        with db.reading() as session:
            page = search(session, case.as_filter(value), cursor=None, limit=PAGE)
            return [row.seq for row in page.items], page.items

    def by_hand(case: FilterCase, value: Any) -> tuple[list[int], list[Any]]:
        with engine.connect() as conn:
            params = {**case.as_params(value), "n": PAGE + 1}
            rows = list(conn.execute(statements[case.name], params).all()[:PAGE])
            return [row.seq for row in rows], rows

    calls = {"search": by_search, "sql": by_hand}
    for case in filter_cases(big.loaded, rng):
        _check_deadline(settings)
        statements[case.name] = case.statement()
        timings: dict[str, list[float]] = {"search": [], "sql": [], "sql+decode": []}
        returned = []
        for index, value in enumerate(case.values):
            pages = {}
            for name in ("search", "sql") if index % 2 == 0 else ("sql", "search"):
                started = time.perf_counter()
                pages[name], rows = calls[name](case, value)
                elapsed = time.perf_counter() - started
                if index >= SEARCH_WARMUP:
                    timings[name].append(elapsed)
                    if name == "sql":
                        timings["sql+decode"].append(elapsed + _decode_seconds(rows))
            if pages["search"] != pages["sql"]:
                raise BenchError(
                    f"search by {case.name} ({value!r}) and its hand-written SQL returned "
                    f"different records: {pages['search'][:5]}... vs {pages['sql'][:5]}..."
                )
            returned.append(len(pages["search"]))
        # One more of each, watched: statements per call, and the plans of both queries.
        probe = case.values[0]
        with Statements(engine) as searched:
            by_search(case, probe)
        with Statements(engine) as handwritten:
            by_hand(case, probe)
        plans = {
            "search": _explain(engine, backend, *searched.selects()[0]),
            "sql": _explain(engine, backend, *handwritten.selects()[0]),
        }
        same_plan = plans["search"]["plan"] == plans["sql"]["plan"]
        s_stats, h_stats = _ms_stats(timings["search"]), _ms_stats(timings["sql"])
        d_stats = _ms_stats(timings["sql+decode"])
        ratio = s_stats["p50_ms"] / h_stats["p50_ms"]
        console.print(
            f"    search by {case.name}: p50 {s_stats['p50_ms']:.2f} ms vs SQL "
            f"{h_stats['p50_ms']:.2f} ms (ratio {ratio:.2f}), p95 {s_stats['p95_ms']:.2f} vs "
            f"{h_stats['p95_ms']:.2f} ms"
        )
        out.append(
            Measurement(
                scenario=AuditTrail.name,
                table=f"audit_trail: first page of search ({PAGE}, newest first) at "
                f"{records:,} records vs the same query in hand-written SQL, ratio of p50s",
                backend=backend,
                columns=(
                    ("filter", case.name),
                    ("search\np50 ms", f"{s_stats['p50_ms']:.2f}"),
                    ("search\np95 ms", f"{s_stats['p95_ms']:.2f}"),
                    ("SQL\np50 ms", f"{h_stats['p50_ms']:.2f}"),
                    ("SQL\np95 ms", f"{h_stats['p95_ms']:.2f}"),
                    ("p95\nratio", f"{s_stats['p95_ms'] / h_stats['p95_ms']:.2f}"),
                    ("SQL+JSON\np50 ms", f"{d_stats['p50_ms']:.2f}"),
                    ("rows\n(mean)", f"{statistics.fmean(returned):.1f}"),
                    ("statements\nsearch / SQL", f"{searched.count} / {handwritten.count}"),
                    ("plans", "same" if same_plan else "differ"),
                ),
                ratio=ratio,
                target_ratio=SEARCH_TARGET,
                data={
                    "filter": case.name,
                    "records": records,
                    "search": s_stats,
                    "sql": h_stats,
                    # The hand-written query's time plus decoding its JSON columns, which the
                    # driver leaves as text on SQLite (psycopg decodes JSONB itself).
                    "sql_plus_json_decode": d_stats,
                    "rows_returned_mean": statistics.fmean(returned),
                    "statements_per_search": searched.count,
                    "statements_per_sql": handwritten.count,
                    "search_sql": searched.selects()[0][0],
                    "hand_sql": handwritten.selects()[0][0],
                    "plans": plans,
                    "same_plan": same_plan,
                },
            )
        )
    return out


# --- b. append ---------------------------------------------------------------------------


def _append_entry(loaded: Loaded, rng: random.Random) -> tuple[AuditEntry, Actor]:
    """A successful reversal, as the gateway records one."""
    pop = loaded.population
    person = next(p for p in pop.people if "support_agent" in p.roles)
    payment = rng.choice(pop.payments)
    before = {
        "id": payment, "account_id": rng.choice(pop.accounts), "direction": "inbound",
        "method": "card", "amount_minor": 25_000, "currency": "USD", "status": "posted",
        "reversed_minor": 0, "version": 1,
    }  # fmt: skip
    after = before | {"status": "partially_reversed", "reversed_minor": 100, "version": 2}
    entry = AuditEntry(
        action="payment.reverse",
        result=AuditResult.SUCCEEDED,
        target=f"payment:{payment}",
        parameters={"amount_minor": 100, "reason_code": "duplicate_charge"},
        reason="Duplicate charge confirmed with the customer, ref ZD-20431",
        before=before,
        after=after,
        outcome={"reversal_id": "rev_01J0000000000000000000000", "amount_minor": 100},
    )
    actor = Actor(person.id, person.name, frozenset(person.roles), person.credentials[0])
    return entry, actor


def _append(db: Database, entry: AuditEntry, actor: Actor, policy_version: str) -> float:
    origin = Origin(new_request_id(), "10.20.4.17", "opsgate-console/1.4.2")
    started = time.perf_counter()
    with db.writing() as session:
        record(
            session,
            entry,
            actor=actor,
            origin=origin,
            policy_version=policy_version,
            now=datetime.now(UTC),
        )
        session.commit()
    return time.perf_counter() - started


def append_row(
    big: Filled, small: Filled, backend: str, settings: Settings, console: Console
) -> Measurement:
    entry, actor = _append_entry(big.loaded, random.Random(5))
    version = big.loaded.population.policy_versions[-1]
    sides = {"big": big, "small": small}
    for side in sides.values():
        for _ in range(APPEND_WARMUP):
            _append(side.db, entry, actor, version)
    timings: dict[str, list[float]] = {"big": [], "small": []}
    blocks = max(1, APPENDS // APPEND_BLOCK)
    for block in range(blocks):
        _check_deadline(settings)
        order = ["big", "small"] if block % 2 == 0 else ["small", "big"]
        for name in order:
            timings[name] += [
                _append(sides[name].db, entry, actor, version) for _ in range(APPEND_BLOCK)
            ]
    counted = {}
    for name, side in sides.items():
        with Statements(side.db.engine) as watched:
            _append(side.db, entry, actor, version)
        counted[name] = [statement for statement, _ in watched.sent]
    b_stats, s_stats = _ms_stats(timings["big"]), _ms_stats(timings["small"])
    ratio = b_stats["p50_ms"] / s_stats["p50_ms"]
    n_big, n_small = big.loaded.records, small.loaded.records
    console.print(
        f"    append: p50 {b_stats['p50_ms']:.2f} ms at {n_big:,} records vs "
        f"{s_stats['p50_ms']:.2f} ms at {n_small:,} (ratio {ratio:.2f})"
    )
    return Measurement(
        scenario=AuditTrail.name,
        table=f"audit_trail: append latency (core.audit.record + commit) at {n_big:,} vs "
        f"{n_small:,} records, ratio of p50s",
        backend=backend,
        columns=(
            ("measured", "append"),
            (f"p50 ms\n{n_big:,}", f"{b_stats['p50_ms']:.2f}"),
            (f"p95 ms\n{n_big:,}", f"{b_stats['p95_ms']:.2f}"),
            (f"p50 ms\n{n_small:,}", f"{s_stats['p50_ms']:.2f}"),
            (f"p95 ms\n{n_small:,}", f"{s_stats['p95_ms']:.2f}"),
            ("p95\nratio", f"{b_stats['p95_ms'] / s_stats['p95_ms']:.2f}"),
            ("statements\nper append", str(len(counted["big"]))),
        ),
        ratio=ratio,
        target_ratio=APPEND_TARGET,
        data={
            "records": {"big": n_big, "small": n_small},
            "big": b_stats,
            "small": s_stats,
            "statements_per_append": counted["big"],
        },
    )


# --- c. verify ---------------------------------------------------------------------------


def _iso_utc(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    # SQLite keeps naive UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'
    return f"{value[:10]}T{value[11:]}+00:00"


def plain_verify(engine: Engine) -> tuple[int, int]:
    """Read every record in seq order, VERIFY_BATCH per statement, and check its hash and
    link with plain SQL and hashlib. Returns (records, statements)."""
    names = (*HASHED_FIELDS, "hash")
    columns = ", ".join(f'"{name}"' for name in names)
    statement = text(f"SELECT {columns} FROM audit_records WHERE seq > :last ORDER BY seq LIMIT :n")
    json_at = [i for i, name in enumerate(names) if name in JSON_FIELDS]
    time_at = names.index("occurred_at")
    loads, sha256 = json.loads, hashlib.sha256
    last, prev, count, statements = 0, GENESIS, 0, 0
    with engine.connect() as conn:
        while True:
            rows = conn.execute(statement, {"last": last, "n": VERIFY_BATCH}).all()
            statements += 1
            for row in rows:
                values = list(row)
                for i in json_at:
                    if isinstance(values[i], str):  # SQLite: JSON text; PostgreSQL: decoded
                        values[i] = loads(values[i])
                values[time_at] = _iso_utc(values[time_at])
                stored = values.pop()
                fields = dict(zip(HASHED_FIELDS, values, strict=True))
                if fields["prev_hash"] != prev or fields["seq"] != last + 1:
                    raise BenchError(f"plain verify: the chain breaks at seq {fields['seq']}")
                digest = sha256(canonical_json(fields).encode()).hexdigest()
                if digest != stored:
                    raise BenchError(f"plain verify: record {fields['seq']} does not hash")
                prev, last = digest, fields["seq"]
                count += 1
            if len(rows) < VERIFY_BATCH:
                break
        head = conn.execute(
            text("SELECT seq, hash FROM audit_chain_head WHERE id = :id"), {"id": HEAD_ID}
        ).one()
        if tuple(head) != (last, prev):
            raise BenchError("plain verify: the chain head does not match the last record")
    return count, statements


def verify_row(big: Filled, backend: str, settings: Settings, console: Console) -> Measurement:
    _check_deadline(settings)
    engine = big.db.engine
    started = time.perf_counter()
    plain_records, plain_statements = plain_verify(engine)
    plain_s = time.perf_counter() - started
    _check_deadline(settings)
    with Statements(engine) as watched, big.db.reading() as session:
        started = time.perf_counter()
        result = verify(session)
        verify_s = time.perf_counter() - started
    if not result.ok:
        raise BenchError(f"audit_chain.verify refused the generated chain: {result.as_dict()}")
    if result.entries != plain_records:
        raise BenchError(f"verify saw {result.entries} records, the plain loop {plain_records}")
    verify_rate, plain_rate = result.entries / verify_s, plain_records / plain_s
    ratio = verify_rate / plain_rate
    console.print(
        f"    verify: {verify_rate:,.0f} records/s vs plain loop {plain_rate:,.0f} records/s "
        f"(ratio {ratio:.2f})"
    )
    return Measurement(
        scenario=AuditTrail.name,
        table="audit_trail: verify throughput, core.audit_chain.verify vs a plain "
        "read-and-hash loop, ratio of records/s",
        backend=backend,
        columns=(
            ("measured", "verify"),
            ("records", f"{result.entries:,}"),
            ("verify\nrecords/s", f"{verify_rate:,.0f}"),
            ("plain\nrecords/s", f"{plain_rate:,.0f}"),
            ("verify s", f"{verify_s:.1f}"),
            ("plain s", f"{plain_s:.1f}"),
            ("statements\nverify / plain", f"{watched.count} / {plain_statements}"),
        ),
        ratio=ratio,
        target_ratio=VERIFY_TARGET,
        at_least=True,
        data={
            "records": result.entries,
            "verify_seconds": verify_s,
            "plain_seconds": plain_s,
            "verify_records_per_s": verify_rate,
            "plain_records_per_s": plain_rate,
            "statements_verify": watched.count,
            "statements_plain": plain_statements,
            "distinct_statements_verify": sorted({s for s, _ in watched.sent}),
        },
    )


# --- the scenario ------------------------------------------------------------------------


@register
class AuditTrail(StandaloneScenario):
    name = "audit_trail"
    description = (
        "audit trail at scale: search (8 filters) vs hand-written SQL, append at N vs 10k "
        "records, verify vs a plain read-and-hash loop"
    )

    def notes(self, settings: Settings) -> list[str]:
        small = small_size(settings.audit_records)
        return [
            f"audit_trail: {settings.audit_records:,} and {small:,} generated records per "
            "database (bench/audit_data.py: ~50 operators, 13 actions, 5,000 targets, "
            "approval flows, 400 days, real hash chain); PostgreSQL got VACUUM ANALYZE after "
            "the load (as autovacuum would), SQLite no ANALYZE (opsgate never runs it)."
        ]

    def run(self, settings: Settings, backend: str, console: Console) -> list[Result]:
        end = datetime.now(UTC)
        big_n = settings.audit_records
        with (
            filled(backend, big_n, settings, console, end) as big,
            filled(backend, small_size(big_n), settings, console, end) as small,
        ):
            rows: list[Result] = []
            console.print(f"  search ({SEARCH_RUNS} runs per filter, each way)")
            rows += search_rows(big, backend, settings, console)
            console.print(f"  append ({APPENDS} at each size)")
            rows.append(append_row(big, small, backend, settings, console))
            console.print("  verify")
            rows.append(verify_row(big, backend, settings, console))
            return rows


def small_size(records: int) -> int:
    """The size appends at `records` are compared with: 10,000, or a tenth of a smaller
    trail."""
    return min(SMALL_RECORDS, max(100, records // 10))
