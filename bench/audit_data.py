"""A realistic audit trail of any length, with its real hash chain, bulk-loaded fast.

`Generator(n).rows()` yields batches of rows (dicts keyed by column) as the control layer would have
written them over 400 days: about 50 operators of five roles (a few much busier than the
rest), a dozen actions, some 5,000 targets (customers, accounts, payments) of uneven
popularity, refusals of every kind, approval flows whose decision and execution records follow
the request minutes to hours later (sharing its approval ID and request ID), near-duplicate
flags, policy versions that change every couple of months, and free-text reasons, many quoting
a ticket number. Times grow with the sequence number. Each row's `prev_hash` and `hash` come
from `opsgate.core.audit.chain.record_hash`, so `audit_chain.verify` accepts the result.

`load` fills a migrated database: a spawned producer process generates, hashes and encodes the
rows while this process writes them, with sqlite3 `executemany` (values encoded by the column
types' own SQLAlchemy bind processors, so they are stored exactly as opsgate stores them) or
with PostgreSQL `COPY ... FROM STDIN` (psycopg). It then points `audit_chain_head` at the last
row. The data is deterministic for a given seed and end time: IDs come from the seeded RNG too.
"""

from __future__ import annotations

import heapq
import itertools
import json
import multiprocessing
import random
import re
import sqlite3
import string
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from queue import Empty
from types import SimpleNamespace
from typing import Any, cast

import psycopg
from psycopg import sql as pgsql
from sqlalchemy import Table, text
from sqlalchemy.engine import make_url

from bench import BenchError
from opsgate.core.audit.chain import GENESIS, HEAD_ID, record_hash
from opsgate.db.engine import make_engine
from opsgate.db.models import AuditRecord
from opsgate_demo.seed import FIRST, LAST

RECORDS = cast(Table, AuditRecord.__table__)
COLUMNS = tuple(column.key for column in RECORDS.columns)
JSON_COLUMNS = ("actor_roles", "parameters", "before", "after", "outcome", "flags")
SPAN = timedelta(days=400)
BATCH = 20_000
DEFAULT_SEED = 20_240_601

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TRIPLES = [a + b + c for a in _CROCKFORD for b in _CROCKFORD for c in _CROCKFORD]


def _base32(value: int, length: int) -> str:
    """`value` as `length` Crockford base32 characters (opsgate.core.ids._encode, faster)."""
    chunks = []
    while length >= 3:
        chunks.append(_TRIPLES[value & 0x7FFF])
        value >>= 15
        length -= 3
    while length:
        chunks.append(_CROCKFORD[value & 31])
        value >>= 5
        length -= 1
    return "".join(reversed(chunks))


def _ulid(prefix: str, millis: int, rng: random.Random) -> str:
    """`prefix_<ULID>` as opsgate.core.ids.new_id makes them (10 characters of milliseconds,
    16 of 80 random bits), from a seeded RNG."""
    return f"{prefix}_{_base32(millis, 10)}{_base32(rng.getrandbits(80), 16)}"


# --- the population ----------------------------------------------------------------------

ROLES_OF_STAFF = (
    ("support_agent", 25, 3.0),  # role, how many people, relative activity
    ("risk_reviewer", 10, 2.0),
    ("ops_lead", 6, 1.2),
    ("admin", 4, 0.3),
    ("auditor", 5, 0.6),
)
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "opsgate-console/1.4.2",
    "python-httpx/0.27.0",
    "curl/8.5.0",
)
TOPICS = (
    "a duplicate card charge", "a missing refund", "an unrecognised ACH debit",
    "a declined card payment", "a chargeback notice", "an address change",
    "a blocked card", "a failed transfer", "fees on the statement", "a merchant dispute",
    "a lost card", "a login from a new device",
)  # fmt: skip
REASON_TEMPLATES = (
    "Customer called about {topic}; ticket {ticket}",
    "Customer emailed about {topic} (ticket {ticket})",
    "Chargeback {case} received from {scheme}, reversing per network rules",
    "Duplicate charge confirmed with the customer, ref {ticket}",
    "Fraud alert {alert}: card testing pattern on the account",
    "Suspicious login from a new device, blocking pending review ({ticket})",
    "KYC document expired, re-running the check per policy KYC-{policy}",
    "Goodwill gesture approved by the team lead, ticket {ticket}",
    "Merchant error acknowledged by {merchant}; ticket {ticket}",
    "Monthly reconciliation difference on {scheme} settlement, case {case}",
    "Kunde meldet Betrug – Überprüfung läuft, Ticket {ticket}",
    "Réclamation client : prélèvement non reconnu, dossier {ticket}",
    "Quarterly access review, sample Q{quarter}",
    "Regulator request {case}: pulling the history",
)
SCHEMES = ("Visa", "Mastercard", "Amex", "SEPA", "ACH")
MERCHANTS = ("Northwind Traders", "Globex Utilities", "Stark Grocers", "Hooli Cloud", "Acme")
_FIELDS: dict[str, Callable[[random.Random], str]] = {
    "topic": lambda rng: rng.choice(TOPICS),
    "ticket": lambda rng: f"ZD-{rng.randint(10_000, 99_999)}",  # each one in a few reasons
    "case": lambda rng: f"CB-{rng.randint(100_000, 999_999)}",
    "alert": lambda rng: f"FA-{rng.randint(1000, 9999)}",
    "scheme": lambda rng: rng.choice(SCHEMES),
    "merchant": lambda rng: rng.choice(MERCHANTS),
    "policy": lambda rng: str(rng.randint(1, 12)),
    "quarter": lambda rng: str(rng.randint(1, 4)),
}
_TEMPLATES = [
    (t, [name for _, name, _, _ in string.Formatter().parse(t) if name]) for t in REASON_TEMPLATES
]
NOTES = (
    "Called back, customer confirmed the transaction.",
    "Sent the dispute form by email.",
    "Customer will upload a new ID document.",
    "Explained the fee schedule; no action needed.",
    "Escalated to risk for review.",
)
REVERSAL_CODES = ("customer_dispute", "duplicate_charge", "fraud", "merchant_error", "goodwill")
DOMAIN_ERRORS = (
    ("domain_rejected:reversal_exceeds_payment", "Only {n} minor units remain to reverse."),
    ("domain_rejected:account_blocked", "Account is blocked (fraud_suspected); no money may move."),
    ("domain_rejected:already_blocked", "The account is already blocked."),
    ("domain_rejected:zero_adjustment", "An adjustment of zero changes nothing."),
)


@dataclass
class Person:
    id: str
    name: str
    roles: list[str]
    credentials: list[str]
    ips: list[str]
    agent: str
    weight: float


@dataclass
class Population:
    """Who acts and on what: built once per seed, shared by the generator and the queries."""

    people: list[Person]
    weights: list[float]
    customers: list[str]
    accounts: list[str]
    payments: list[str]
    policy_versions: list[str]

    @property
    def targets(self) -> list[str]:
        return (
            [f"customer:{c}" for c in self.customers]
            + [f"account:{a}" for a in self.accounts]
            + [f"payment:{p}" for p in self.payments]
        )


def population(rng: random.Random, start_ms: int) -> Population:
    people = []
    for role, count, activity in ROLES_OF_STAFF:
        for _ in range(count):
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            people.append(
                Person(
                    id=_ulid("usr", start_ms - rng.randint(0, 10**10), rng),
                    name=name,
                    roles=[role] if rng.random() < 0.9 else sorted({role, "support_agent"}),
                    credentials=[
                        _ulid("tok", start_ms + rng.randint(0, 3 * 10**10), rng)
                        for _ in range(rng.randint(1, 4))
                    ],
                    ips=[f"10.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"],
                    agent=rng.choice(USER_AGENTS),
                    # A few people do most of the work (Pareto-like).
                    weight=activity * rng.paretovariate(1.5),
                )
            )
    ms = start_ms - 10**10
    return Population(
        people=people,
        weights=[p.weight for p in people],
        customers=[_ulid("cus", ms + i, rng) for i in range(1500)],
        accounts=[_ulid("acc", ms + i, rng) for i in range(2000)],
        payments=[_ulid("pay", ms + i, rng) for i in range(1500)],
        policy_versions=[rng.randbytes(32).hex() for _ in range(7)],
    )


# --- the stream of records ---------------------------------------------------------------

# action: (weight, target kind, roles that may start it)
ACTIONS: dict[str, tuple[float, str | None, tuple[str, ...]]] = {
    "customer.add_note": (30, "customer", ("support_agent", "risk_reviewer", "ops_lead")),
    "customer.view_pii": (14, "customer", ("support_agent", "risk_reviewer", "ops_lead")),
    "payment.reverse": (14, "payment", ("support_agent", "risk_reviewer", "ops_lead")),
    "kyc.rerun_check": (8, "customer", ("support_agent", "risk_reviewer", "ops_lead")),
    "audit.read": (8, None, ("risk_reviewer", "ops_lead", "auditor", "admin")),
    "account.block": (6, "account", ("support_agent", "risk_reviewer", "ops_lead")),
    "approval.read": (5, None, ("risk_reviewer", "ops_lead")),
    "account.adjust_balance": (4, "account", ("risk_reviewer", "ops_lead")),
    "account.unblock": (3, "account", ("risk_reviewer", "ops_lead")),
    "auth.token": (2, None, ()),
    "admin.assign_role": (0.3, None, ("admin",)),
    "audit.verify": (0.3, None, ("auditor", "admin")),
    "system.start": (0.1, None, ()),
}
APPROVED_ACTIONS = ("payment.reverse", "account.adjust_balance", "account.unblock")


@dataclass
class Sample:
    """Values seen while generating, for the search benchmark to look for."""

    request_ids: list[str] = field(default_factory=list)
    approval_ids: list[str] = field(default_factory=list)
    tickets: list[str] = field(default_factory=list)
    results: set[str] = field(default_factory=set)
    actions: set[str] = field(default_factory=set)
    first: datetime | None = None
    last: datetime | None = None


class Generator:
    """Rows in chain order. `sample` fills up as rows are made."""

    def __init__(
        self, total: int, *, seed: int = DEFAULT_SEED, end: datetime | None = None
    ) -> None:
        self.total = total
        self.rng = random.Random(seed)
        self.end = (end or datetime.now(UTC)).replace(microsecond=0) - timedelta(minutes=5)
        self.start = self.end - SPAN
        self.start_us = int(self.start.timestamp() * 1_000_000)
        self.step_us = SPAN / timedelta(microseconds=1) / max(total, 1)
        self.pop = population(self.rng, self.start_us // 1000)
        self.sample = Sample()
        self._pending: list[tuple[int, int, dict[str, Any]]] = []  # (due seq, tiebreak, row)
        self._names = list(ACTIONS)
        self._action_cum = list(itertools.accumulate(ACTIONS[a][0] for a in self._names))
        self._pools: dict[tuple[str, ...], tuple[list[Person], list[float]]] = {}
        self._order = itertools.count()
        self._sample_every = max(1, total // 2000)
        self._targets = {
            "customer": [f"customer:{c}" for c in self.pop.customers],
            "account": [f"account:{a}" for a in self.pop.accounts],
            "payment": [f"payment:{p}" for p in self.pop.payments],
        }
        # Popularity of targets: a long tail (1/rank^0.8), fixed per kind.
        self._target_cum = {
            kind: _cumulative([1 / (rank + 1) ** 0.8 for rank in range(len(values))])
            for kind, values in self._targets.items()
        }

    # one row -----------------------------------------------------------------------------

    def _time(self, seq: int) -> datetime:
        micros = self.start_us + int((seq - 1 + self.rng.random() * 0.9) * self.step_us)
        return datetime.fromtimestamp(micros / 1_000_000, UTC)

    def _target(self, kind: str | None) -> str | None:
        if kind is None:
            return None
        values = self._targets[kind]
        return values[_pick(self._target_cum[kind], self.rng.random())]

    def _reason(self) -> str:
        rng = self.rng
        template, fields = rng.choice(_TEMPLATES)
        values = {name: _FIELDS[name](rng) for name in fields}
        if "ticket" in values and rng.random() < 0.01:
            self.sample.tickets.append(values["ticket"])
        return template.format_map(values)

    def _person(self, roles: tuple[str, ...]) -> Person:
        pool = self._pools.get(roles)
        if pool is None:
            people = [p for p in self.pop.people if not set(p.roles).isdisjoint(roles)]
            pool = self._pools[roles] = (
                people,
                list(itertools.accumulate(p.weight for p in people)),
            )
        return self.rng.choices(pool[0], cum_weights=pool[1])[0]

    def _base(self, action: str, person: Person | None, request_id: str) -> dict[str, Any]:
        rng = self.rng
        return {
            "execution_request_id": None,
            "approval_id": None,
            "actor_id": person.id if person else None,
            "actor_name": person.name if person else None,
            "actor_roles": person.roles if person else None,
            "credential_id": rng.choice(person.credentials) if person else None,
            "origin_ip": person.ips[0] if person else f"203.0.113.{rng.randint(1, 254)}",
            "user_agent": person.agent if person else rng.choice(USER_AGENTS),
            "action": action,
            "target": None,
            "parameters": None,
            "reason": None,
            "result": "succeeded",
            "error_code": None,
            "error_message": None,
            "before": None,
            "after": None,
            "outcome": None,
            "flags": None,
            "request_id": request_id,
        }

    def _request(self, seq: int) -> dict[str, Any]:
        """A new operator request (and, for approvals, its later decision and execution)."""
        rng = self.rng
        action = rng.choices(self._names, cum_weights=self._action_cum)[0]
        _weight, kind, roles = ACTIONS[action]
        request_id = "req_" + rng.randbytes(13).hex()
        if action == "system.start":
            row = self._base(action, None, request_id)
            row["user_agent"] = "opsgate/0.1.0"
            row["origin_ip"] = None
            row["parameters"] = {"pid": rng.randint(1000, 99999), "database": "postgresql"}
            return row
        if action == "auth.token":
            row = self._base(action, None, request_id)
            row["result"] = "denied"
            row["parameters"] = {"method": "POST", "path": "/api/v1/actions/payment.reverse"}
            row["error_code"] = "unauthenticated"
            row["error_message"] = "The bearer token is unknown, expired or revoked."
            return row
        person = self._person(roles)
        row = self._base(action, person, request_id)
        target = self._target(kind)
        row["target"] = target
        draw = rng.random()
        if action in ("audit.read", "approval.read", "audit.verify", "admin.assign_role"):
            row["parameters"] = {"actor": rng.choice(self.pop.people).id, "returned": 50}
            if draw < 0.03:
                row["result"] = "denied"
                row["error_code"] = "forbidden"
                row["error_message"] = f"Your roles do not include {action}."
            return row
        row["reason"] = self._reason()
        amount = rng.choice((rng.randint(100, 9_000), rng.randint(100, 80_000)))
        if action == "payment.reverse":
            row["parameters"] = {"amount_minor": amount, "reason_code": rng.choice(REVERSAL_CODES)}
        elif action == "account.adjust_balance":
            row["parameters"] = {"amount_minor": amount * rng.choice((1, -1)), "memo": "fix"}
        elif action == "customer.add_note":
            row["parameters"] = {"text": rng.choice(NOTES)}
        elif action == "account.block":
            row["parameters"] = {"reason": rng.choice(("fraud_suspected", "customer_request"))}
        elif action == "customer.view_pii":
            row["parameters"] = {"fields": ["email", "phone"]}
        else:
            row["parameters"] = {}
        if draw < 0.02:
            row["result"] = "denied"
            row["error_code"] = "forbidden"
            row["error_message"] = f"Your roles do not allow {action}."
            row["reason"] = None
            return row
        if draw < 0.045:
            row["result"] = "invalid"
            row["error_code"] = "invalid_payload"
            row["error_message"] = f"The payload of {action} is invalid."
            return row
        if draw < 0.06 and action in ("payment.reverse", "account.adjust_balance", "account.block"):
            code, message = rng.choice(DOMAIN_ERRORS)
            row["result"] = "failed"
            row["error_code"] = code
            row["error_message"] = message.format(n=rng.randint(0, 5000))
            return row
        if draw < 0.065 and action == "payment.reverse":
            row["result"] = "limited"
            row["error_code"] = "limit_exceeded"
            row["outcome"] = {"limits": [{"name": "hourly_reversal_count", "used": 30}]}
            return row
        if action in APPROVED_ACTIONS and (
            action == "account.unblock" or abs(amount) > 10_000 or action.startswith("account.")
        ):
            return self._approval(seq, row, person, amount)
        self._succeed(row, kind, target, amount, draw)
        return row

    def _succeed(
        self, row: dict[str, Any], kind: str | None, target: str | None, amount: int, draw: float
    ) -> None:
        rng = self.rng
        ident = target.split(":", 1)[1] if target else None
        if kind == "payment":
            reversed_minor = rng.randint(0, 5) * 100
            before: dict[str, Any] = {
                "id": ident, "account_id": rng.choice(self.pop.accounts),
                "direction": rng.choice(("inbound", "outbound")),
                "method": rng.choice(("card", "ach")), "amount_minor": 90_000,
                "currency": rng.choice(("USD", "EUR", "GBP")), "status": "posted",
                "reversed_minor": reversed_minor, "version": rng.randint(1, 6),
            }  # fmt: skip
            after = before | {
                "status": "partially_reversed",
                "reversed_minor": reversed_minor + amount,
                "version": before["version"] + 1,
            }
            row["before"], row["after"] = before, after
            row["outcome"] = {
                "reversal_id": _ulid("rev", self.start_us // 1000, rng),
                "payment_id": ident,
                "amount_minor": amount,
                "ledger_transaction_id": _ulid("ltx", self.start_us // 1000, rng),
            }
            if draw > 0.985:
                row["flags"] = {
                    "near_duplicates": [{"request_id": rng.choice(self.sample.request_ids or [""])}]
                }
        elif kind == "account":
            before = {
                "id": ident, "customer_id": rng.choice(self.pop.customers),
                "status": "active", "blocked_reason": None, "currency": "USD",
                "balance_minor": rng.randint(0, 2_000_000), "version": rng.randint(1, 9),
            }  # fmt: skip
            if row["action"] == "account.block":
                after = before | {"status": "blocked", "blocked_reason": "fraud_suspected"}
            elif row["action"] == "account.unblock":
                before |= {"status": "blocked", "blocked_reason": "fraud_suspected"}
                after = before | {"status": "active", "blocked_reason": None}
            else:
                after = before | {"balance_minor": before["balance_minor"] + amount}
            after["version"] = before["version"] + 1
            row["before"], row["after"] = before, after
            row["outcome"] = {"account_id": ident}
        elif row["action"] == "customer.add_note":
            row["outcome"] = {"note_id": _ulid("not", self.start_us // 1000, rng)}
        elif row["action"] == "kyc.rerun_check":
            row["before"] = {"id": ident, "kyc_status": "review", "version": 3}
            row["after"] = {"id": ident, "kyc_status": "passed", "version": 4}
            row["outcome"] = {"kyc_status": "passed"}
        else:
            row["outcome"] = {"fields": ["email", "phone"]}

    def _approval(
        self, seq: int, row: dict[str, Any], person: Person, amount: int
    ) -> dict[str, Any]:
        rng = self.rng
        approval_id = _ulid("apr", self.start_us // 1000 + seq, rng)
        row["result"] = "approval_requested"
        row["approval_id"] = approval_id
        row["outcome"] = {"rule": {"quorum": 1, "approver_roles": ["ops_lead", "risk_reviewer"]}}
        if seq % self._sample_every == 0:
            self.sample.approval_ids.append(approval_id)
        # The decision comes 10 to 2,000 records later (minutes to hours).
        decided = seq + rng.randint(10, 2000)
        approver = self._person(("risk_reviewer", "ops_lead"))
        outcome = rng.choices(("approved", "rejected", "expired", "cancelled"), (85, 8, 5, 2))[0]
        decision = self._base(row["action"], approver, "req_" + rng.randbytes(13).hex())
        decision |= {
            "target": row["target"],
            "approval_id": approval_id,
            "result": outcome,
            "reason": "Checked the evidence; " + ("agreed" if outcome == "approved" else "no"),
            "parameters": row["parameters"],
        }
        self._later(decided, decision)
        if outcome == "approved":
            execution = dict(row)
            execution |= {
                "result": "succeeded" if rng.random() < 0.97 else "stale",
                "execution_request_id": "req_" + rng.randbytes(13).hex(),
                "outcome": None,
            }
            kind = (row["target"] or ":").split(":", 1)[0] or None
            self._succeed(execution, kind, row["target"], amount, 0.0)
            self._later(decided + 1, execution)
        return row

    def _later(self, due: int, row: dict[str, Any]) -> None:
        heapq.heappush(self._pending, (due, next(self._order), row))

    # the stream ------------------------------------------------------------------------------

    def rows(self, batch: int = BATCH) -> Iterator[list[dict[str, Any]]]:
        """All `total` rows in batches, each with seq, id, occurred_at, prev_hash and hash."""
        rng = self.rng
        prev = GENESIS
        policy_versions = self.pop.policy_versions
        out: list[dict[str, Any]] = []
        sample = self.sample
        for seq in range(1, self.total + 1):
            if self._pending and self._pending[0][0] <= seq:
                row = heapq.heappop(self._pending)[2]
            else:
                row = self._request(seq)
            at = self._time(seq)
            row["seq"] = seq
            row["id"] = _ulid("aud", int(at.timestamp() * 1000), rng)
            row["occurred_at"] = at
            row["policy_version"] = policy_versions[(seq - 1) * len(policy_versions) // self.total]
            row["prev_hash"] = prev
            prev = row["hash"] = record_hash(SimpleNamespace(**row))  # type: ignore[arg-type]
            out.append(row)
            if seq % self._sample_every == 0:
                sample.request_ids.append(row["execution_request_id"] or row["request_id"])
            sample.results.add(row["result"])
            sample.actions.add(row["action"])
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out
        sample.first = self.start
        sample.last = self.end
        self.head = (self.total, prev)


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return [x / total for x in out]


def _pick(cumulative: list[float], u: float) -> int:
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] < u:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --- loading -----------------------------------------------------------------------------
#
# Two processes share the work: a producer (spawned) generates, hashes and encodes the rows in
# the database's input format, and this process writes the encoded batches. On two cores that
# keeps both busy, which halves the time of filling a million records.

PRODUCER_TIMEOUT_S = 120.0  # for one batch


@dataclass(frozen=True)
class Loaded:
    records: int
    seconds: float
    head: tuple[int, str]
    sample: Sample
    population: Population


def _sqlite_encoder() -> Callable[[list[dict[str, Any]]], list[tuple[Any, ...]]]:
    """Rows as the positional parameters of INSERT INTO audit_records, through the column
    types' own SQLAlchemy bind processors (UTCDateTime, JSON): stored as opsgate stores them."""
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    processors = [
        RECORDS.c[key].type.dialect_impl(dialect).bind_processor(dialect) for key in COLUMNS
    ]
    pairs = list(zip(COLUMNS, processors, strict=True))

    def encode(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [tuple(p(row[k]) if p else row[k] for k, p in pairs) for row in rows]

    return encode


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _copy_text(value: str) -> str:
    if _COPY_SPECIAL.search(value) is None:
        return value
    return _COPY_SPECIAL.sub(lambda m: _COPY_ESCAPES[m.group(0)], value)


def _copy_encoder() -> Callable[[list[dict[str, Any]]], bytes]:
    """Rows as PostgreSQL COPY text. JSON columns get JSON text (None becomes JSON null, as
    SQLAlchemy writes it); times ISO 8601 with their UTC offset."""
    dumps = json.dumps
    json_columns = frozenset(JSON_COLUMNS)

    def field_text(key: str, value: Any) -> str:
        if key in json_columns:
            return _copy_text(dumps(value))
        if value is None:
            return "\\N"
        if isinstance(value, str):
            return _copy_text(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    def encode(rows: list[dict[str, Any]]) -> bytes:
        lines = ["\t".join([field_text(k, row[k]) for k in COLUMNS]) for row in rows]
        return ("\n".join(lines) + "\n").encode()

    return encode


def _produce(total: int, seed: int, end: datetime, backend: str, batch: int, queue: Any) -> None:
    """The producer process: ("rows", count, encoded) per batch, then ("done", head, sample,
    population), or ("error", text)."""
    try:
        generator = Generator(total, seed=seed, end=end)
        encode: Callable[[list[dict[str, Any]]], Any] = (
            _copy_encoder() if backend == "postgresql" else _sqlite_encoder()
        )
        for rows in generator.rows(batch):
            queue.put(("rows", len(rows), encode(rows)))
        queue.put(("done", generator.head, generator.sample, generator.pop))
    except BaseException:  # the parent reports it
        queue.put(("error", traceback.format_exc(limit=8)))


def load(
    database_url: str,
    backend: str,
    total: int,
    *,
    deadline: float,
    seed: int = DEFAULT_SEED,
    end: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> Loaded:
    """Fill the (migrated, empty) audit trail of `database_url` with `total` chained records
    ending at `end` (default: a few minutes ago), and point the chain head at the last one."""
    end = end or datetime.now(UTC)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue(maxsize=4)
    producer = context.Process(
        target=_produce,
        args=(total, seed, end, backend, BATCH, queue),
        name="bench-audit-producer",
        daemon=True,
    )
    started = time.perf_counter()
    producer.start()

    def batches() -> Iterator[tuple[int, Any]]:
        while True:
            _check_deadline(deadline)
            try:
                message = queue.get(timeout=PRODUCER_TIMEOUT_S)
            except Empty:
                raise BenchError(
                    f"the audit record producer sent nothing for {PRODUCER_TIMEOUT_S:.0f} s "
                    f"(exit code {producer.exitcode})"
                ) from None
            if message[0] == "rows":
                yield message[1], message[2]
            elif message[0] == "done":
                finished.extend(message[1:])
                return
            else:
                raise BenchError(f"generating audit records failed:\n{message[1]}")

    finished: list[Any] = []
    try:
        if backend == "postgresql":
            _write_postgresql(database_url, batches(), progress)
        else:
            _write_sqlite(database_url, batches(), progress)
        head, sample, pop = finished
        _set_head(database_url, backend, head)
    finally:
        if producer.is_alive():
            producer.terminate()  # only ours, by its handle
        producer.join(timeout=10)
        queue.close()
    return Loaded(total, time.perf_counter() - started, head, sample, pop)


def _check_deadline(deadline: float) -> None:
    if time.perf_counter() > deadline:
        raise BenchError("the time budget ran out while filling the audit trail (--max-seconds)")


def _sqlite_path(url: str) -> str:
    database = make_url(url).database
    if not database:
        raise BenchError(f"not a SQLite file URL: {url}")
    return database


def _write_sqlite(
    url: str, batches: Iterator[tuple[int, Any]], progress: Callable[[int], None] | None
) -> None:
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    sql = f"INSERT INTO audit_records ({columns}) VALUES ({', '.join('?' * len(COLUMNS))})"
    conn = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB, for this connection only
        if conn.execute("SELECT count(*) FROM audit_records").fetchone() != (0,):
            raise BenchError("the audit trail to fill is not empty")
        for count, rows in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            if progress:
                progress(count)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def libpq_url(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy `+driver` suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _write_postgresql(
    url: str, batches: Iterator[tuple[int, Any]], progress: Callable[[int], None] | None
) -> None:
    statement = pgsql.SQL("COPY audit_records ({}) FROM STDIN").format(
        pgsql.SQL(", ").join(pgsql.Identifier(c) for c in COLUMNS)
    )
    with psycopg.connect(libpq_url(url)) as conn:
        if conn.execute("SELECT count(*) FROM audit_records").fetchone() != (0,):
            raise BenchError("the audit trail to fill is not empty")
        conn.commit()
        for count, data in batches:
            with conn.cursor() as cur, cur.copy(statement) as copy:
                copy.write(data)
            conn.commit()
            if progress:
                progress(count)
    # What autovacuum would soon do after a bulk insert: statistics and the visibility map.
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_records")


def _set_head(url: str, backend: str, head: tuple[int, str]) -> None:
    """Point the chain head at the last record, as the appends would have left it."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_chain_head SET seq = :seq, hash = :hash WHERE id = :id"),
                {"seq": head[0], "hash": head[1], "id": HEAD_ID},
            )
    finally:
        engine.dispose()
