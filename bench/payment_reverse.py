"""`payment.reverse` through the whole governed HTTP path, against its bare twin.

governed: POST /api/v1/actions/payment.reverse with a bearer token, a fresh Idempotency-Key
          and {"target": "payment:<id>", "payload": {"amount_minor": 100, "reason_code":
          "duplicate_charge"}, "reason": ...}: middleware, authentication, policy,
          idempotency claim, validation, row-locked payment, near-duplicate lookup, usage
          limits, approval rule, handler (ledger transaction), audit record, stored answer,
          one transaction.
bare:     POST /bench/payments/<id>/reversals with {"payload": {...}}: the same handler on the
          same locked payment in one transaction, with no controls.

100 minor units is below the policy's approval threshold (10,000), so every governed request
executes at once. The demo policy also enforces `hourly_reversal_count` (30 reversals per
operator per hour), which would refuse the governed run after 30 requests per operator: this
scenario starts its own `opsgate serve` with OPSGATE_POLICY pointing at a copy of the demo
policy in which that limit's mode is "off" (nothing else changed). Requests go round-robin to
the operators the policy lets reverse payments, and to every payment on an active account with
room left for all the reversals planned, the same sequence for both endpoints.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import secrets
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import select

from bench import BenchError
from bench.load import Call, Endpoint
from bench.scenarios import (
    Comparison,
    Scenario,
    Settings,
    Target,
    client_counts,
    compare,
    register,
)
from bench.servers import run_cli, serve
from opsgate.db.engine import Database
from opsgate_demo.models import Account, AccountStatus, Payment
from opsgate_demo.plugin import DEMO_POLICY

ACTION = "payment.reverse"
AMOUNT_MINOR = 100  # below the approval threshold (10,000) of the demo policy
REASON_CODE = "duplicate_charge"
OFF_LIMIT = "hourly_reversal_count"
# The demo users whose roles may start payment.reverse (support_agent, risk_reviewer, ops_lead).
OPERATORS = ("alice", "bob", "rita", "raj", "olga")
MIN_PAYMENTS = 50


def policy_without_hourly_limit(demo_text: str) -> str:
    """The demo policy with payment.reverse's `hourly_reversal_count` limit set to mode "off".

    Raises BenchError unless that is the one difference (checked on the parsed TOML)."""
    sections = re.split(r"(?m)^(?=\[)", demo_text)
    changed = 0
    for index, section in enumerate(sections):
        if section.startswith(f'[[actions."{ACTION}".limits]]') and re.search(
            rf'(?m)^name\s*=\s*"{OFF_LIMIT}"\s*$', section
        ):
            section, found = re.subn(r'(?m)^mode\s*=\s*"[a-z]+"', 'mode = "off"', section)
            if not found:
                section = section.rstrip("\n") + '\nmode = "off"\n\n'
            sections[index] = section
            changed += 1
    edited = "".join(sections)
    expected = tomllib.loads(demo_text)
    rules = expected["actions"][ACTION].get("limits", [])
    for rule in rules:
        if rule.get("name") == OFF_LIMIT:
            rule["mode"] = "off"
    if changed != 1 or tomllib.loads(edited) != expected:
        raise BenchError(
            f"could not turn off {ACTION}'s {OFF_LIMIT} limit in {DEMO_POLICY}: "
            "the demo policy no longer has the expected shape"
        )
    return edited


def reversible_payments(database_url: str, planned: int) -> list[str]:
    """Payments on active accounts, each with room for its share of `planned` reversals (per
    endpoint: both endpoints reverse the same payments in the same order)."""
    db = Database(database_url)
    try:
        with db.reading() as session:
            rows = session.execute(
                select(Payment.id, Payment.amount_minor - Payment.reversed_minor)
                .join(Account, Account.id == Payment.account_id)
                .where(Account.status == AccountStatus.ACTIVE)
                .order_by(Payment.id)
            ).all()
    finally:
        db.dispose()
    candidates = sorted(((room, pid) for pid, room in rows), reverse=True)
    chosen: list[str] = []
    for count in range(len(candidates), 0, -1):
        per_payment = 2 * math.ceil(planned / count)  # governed + bare
        if candidates[count - 1][0] >= per_payment * AMOUNT_MINOR:
            chosen = sorted(pid for _room, pid in candidates[:count])
            break
    if len(chosen) < MIN_PAYMENTS:
        raise BenchError(
            f"only {len(chosen)} seeded payments have room for {planned} reversals of "
            f"{AMOUNT_MINOR} minor units per endpoint; lower --requests or --warmup"
        )
    return chosen


def _reversed(body: Any) -> str | None:
    if not isinstance(body, dict) or body.get("status") != "succeeded":
        return "the answer does not say status=succeeded"
    result = body.get("result")
    if not isinstance(result, dict) or not str(result.get("reversal_id", "")).startswith("rev_"):
        return "the answer carries no reversal_id"
    if result.get("amount_minor") != AMOUNT_MINOR:
        return f"the answer does not reverse {AMOUNT_MINOR} minor units"
    return None


def endpoints(payments: list[str], tokens: dict[str, str]) -> tuple[Endpoint, Endpoint]:
    """The governed endpoint and its bare twin, reversing the same payments in turn."""
    json_header = {"Content-Type": "application/json"}
    operators = [tokens[name] for name in OPERATORS]
    run = secrets.token_hex(4)  # Idempotency-Keys never repeat, across runs too

    def factory(kind: str) -> Callable[[int], Call]:
        sequence = itertools.count()  # next() on a count is atomic under the GIL

        def call(_n: int) -> Call:
            i = next(sequence)
            payment = payments[i % len(payments)]
            payload = {"amount_minor": AMOUNT_MINOR, "reason_code": REASON_CODE}
            if kind == "bare":
                body = json.dumps({"payload": payload}).encode()
                return Call(f"/bench/payments/{payment}/reversals", body, json_header)
            body = json.dumps(
                {
                    "target": f"payment:{payment}",
                    "payload": payload,
                    "reason": f"benchmark: duplicate charge confirmed, ticket ZD-{i:06d}",
                }
            ).encode()
            headers = {
                **json_header,
                "Authorization": f"Bearer {operators[i % len(operators)]}",
                "Idempotency-Key": f"bench-{run}-{i}",
            }
            return Call(f"/api/v1/actions/{ACTION}", body, headers)

        return call

    return (
        Endpoint(
            "governed",
            factory("governed"),
            _reversed,
            {
                401: "an operator's token was refused",
                403: f"an operator may not {ACTION}",
                202: "the reversal was held for approval (amount above the threshold?)",
                429: f"a usage limit refused the reversal (is {OFF_LIMIT} off?)",
            },
        ),
        Endpoint(
            "bare",
            factory("bare"),
            _reversed,
            {404: "the server was started without OPSGATE_BENCH_ENDPOINTS=1"},
        ),
    )


@register
class PaymentReverse(Scenario):
    name = "payment_reverse"
    description = (
        f"{ACTION} ({AMOUNT_MINOR} minor units): governed HTTP action vs bare endpoint, "
        f"policy with {OFF_LIMIT} off"
    )

    def notes(self, settings: Settings) -> list[str]:
        return [
            f"payment_reverse: opsgate serve ran with OPSGATE_POLICY set to a copy of the demo "
            f'policy in which {ACTION}\'s "{OFF_LIMIT}" limit (30 per operator per hour, '
            f'enforced) has mode = "off", else the governed run would be refused after 30 '
            f"requests per operator; nothing else differs (daily_reversed_amount stays in "
            f"monitor mode; {AMOUNT_MINOR} minor units need no approval). Requests rotate over "
            f"{len(OPERATORS)} operators ({', '.join(OPERATORS)})."
        ]

    def run(self, settings: Settings, target: Target, console: Console) -> list[Comparison]:
        database = target.database
        planned = (settings.warmup + settings.requests) * len(client_counts(settings.concurrency))
        payments = reversible_payments(database.url, planned)
        tokens = dict(target.seeded.tokens)
        for username in OPERATORS:
            if username not in tokens:
                lines = run_cli(database.url, "tokens", "create", username).strip().splitlines()
                if not lines:
                    raise BenchError(f"`opsgate tokens create {username}` printed no token")
                tokens[username] = lines[-1].strip()
        governed, bare = endpoints(payments, tokens)
        with tempfile.TemporaryDirectory(prefix="opsgate-bench-policy-") as directory:
            policy = Path(directory) / "policy.toml"
            policy.write_text(
                policy_without_hourly_limit(DEMO_POLICY.read_text(encoding="utf-8")),
                encoding="utf-8",
            )
            log_path = settings.results_dir / f"server-{database.backend}-{self.name}.log"
            env = {"OPSGATE_BENCH_ENDPOINTS": "1", "OPSGATE_POLICY": str(policy)}
            with serve(database.url, log_path, env=env) as server:
                console.print(
                    f"  opsgate serve on {server.base_url} with {OFF_LIMIT} off "
                    f"(policy: {policy}, log: {log_path}); {len(payments)} payments, "
                    f"{len(OPERATORS)} operators"
                )
                return compare(
                    self.name, settings, database.backend, server, governed, bare, console
                )
