"""The console's server-rendered pages on SQLite with the demo data: median and p95 per page.

The issue that introduced the console set a target: every page renders in under 100 ms at
the median on SQLite with the demo data. This scenario measures it end to end, over HTTP, as a
browser would see it (less the browser):

1. a fresh SQLite database, migrated and seeded through the CLI (`opsgate db upgrade`,
   `opsgate demo seed --json --demo-passwords`, tokens for alice and rita);
2. one `opsgate serve` (with a signing key of its own, so nothing is written to the working
   directory);
3. one pending approval, made through the API: alice blocks an account, rita asks for it to
   be unblocked (202, held for approval by a risk reviewer or an ops lead);
4. olga (ops lead, a reviewer) signs in to the console with the demo password (the sign-in
   form, its CSRF token and the session cookie, as a browser does);
5. for each page: home, search results (POST of the search form), a customer, the
   payment.reverse form on a payment, the approvals inbox, the pending approval, the audit
   log and the approval metrics: warm-up requests, then measured requests with one
   keep-alive client, one at a time, in rounds that visit every page in turn (so drift weighs
   on all pages alike). Every answer must be 200 and the expected page.

On other backends it measures nothing: the target is stated for SQLite.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console

from bench import BenchError
from bench.load import REQUEST_TIMEOUT_S, RunResult, Stats, split
from bench.scenarios import Measurement, Result, Settings, StandaloneScenario, register
from bench.servers import PROVISIONERS, Server, run_cli, serve
from opsgate.cli import DEMO_PASSWORD

BACKEND = "sqlite"
TARGET_MS = 100.0
REQUESTS_PER_PAGE = 50
WARMUP_PER_PAGE = 5
ROUNDS = 5  # measured requests per page are split into this many rounds over all pages
REVIEWER = "olga"  # ops_lead: may search, read the audit log, reverse payments and approve
BLOCKER = "alice"  # support_agent: may block an account, not unblock it
REQUESTER = "rita"  # risk_reviewer: may ask for an unblock (held for a second person)
TABLE = f"opsgate: console pages on SQLite with the demo data (target: median < {TARGET_MS:g} ms)"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Page:
    """One console page to measure: how to ask for it, and how to tell it is the right one."""

    name: str
    method: str  # GET, or POST for the search form
    path: str
    expect: tuple[str, ...]  # every one of these must be in the page
    form: Callable[[int], Mapping[str, str]] | None = None  # the POST form of request `i`
    shown: str = ""  # the request as printed in the table
    expect_each: Callable[[int], tuple[str, ...]] | None = None  # also in the answer to `i`

    def label(self) -> str:
        return self.shown or f"{self.method} {self.path}"


@dataclass
class Demo:
    """What `opsgate demo seed --json` created that the pages need."""

    customers: list[dict[str, Any]]
    accounts: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    tokens: dict[str, str] = field(default_factory=dict)


def seed(database_url: str) -> Demo:
    run_cli(database_url, "db", "upgrade")
    out = run_cli(database_url, "demo", "seed", "--json", "--demo-passwords")
    try:
        line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
        summary = json.loads(line)
        demo = Demo(summary["customers"], summary["accounts"], summary["payments"])
    except (StopIteration, ValueError, KeyError, TypeError) as exc:
        message = (
            f"`opsgate demo seed --json --demo-passwords` printed no usable JSON:\n{out[-500:]}"
        )
        raise BenchError(message) from exc
    if not demo.customers or len(demo.accounts) < 2 or not demo.payments:
        raise BenchError("`opsgate demo seed` created too little data for the console pages")
    for username in (BLOCKER, REQUESTER):
        lines = run_cli(database_url, "tokens", "create", username).strip().splitlines()
        if not lines:
            raise BenchError(f"`opsgate tokens create {username}` printed no token")
        demo.tokens[username] = lines[-1].strip()
    return demo


def _act(client: httpx.Client, token: str, action: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(
        f"/api/v1/actions/{action}",
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": f"bench-console-{secrets.token_hex(8)}",
        },
    )


def pending_approval(client: httpx.Client, demo: Demo, account_id: str) -> str:
    """alice blocks `account_id`, rita asks for its unblock: the approval ID (pending)."""
    target = f"account:{account_id}"
    blocked = _act(
        client,
        demo.tokens[BLOCKER],
        "account.block",
        {
            "target": target,
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "benchmark: odd card use",
        },
    )
    if blocked.status_code != 200 or blocked.json().get("status") != "succeeded":
        raise BenchError(
            f"{BLOCKER} could not block {target}: {blocked.status_code} {blocked.text[:500]}"
        )
    held = _act(
        client,
        demo.tokens[REQUESTER],
        "account.unblock",
        {"target": target, "payload": {}, "reason": "benchmark: customer verified by phone"},
    )
    approval_id = held.json().get("approval_id") if held.status_code == 202 else None
    if not isinstance(approval_id, str) or not approval_id:
        raise BenchError(
            f"{REQUESTER}'s account.unblock was not held for approval (expected 202 with an "
            f"approval_id): {held.status_code} {held.text[:500]}"
        )
    return approval_id


def csrf_token(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    if found is None:
        raise BenchError(f"{page.request.url.path} carries no CSRF token")
    return html.unescape(found.group(1))


def sign_in(client: httpx.Client, username: str) -> str:
    """Sign in through the console's form, as a browser does; the CSRF token of the session."""
    form = client.get("/console/login")
    if form.status_code != 200:
        raise BenchError(f"GET /console/login answered {form.status_code}")
    done = client.post(
        "/console/login",
        data={
            "username": username,
            "password": DEMO_PASSWORD,
            "next": "/console",
            "csrf_token": csrf_token(form),
        },
    )
    if done.status_code != 303 or done.headers.get("location") != "/console":
        raise BenchError(
            f"{username} could not sign in to the console (was the demo seeded with "
            f"--demo-passwords?): {done.status_code} {done.text[:500]}"
        )
    home = client.get("/console")
    if home.status_code != 200 or "<title>Home · opsgate</title>" not in home.text:
        raise BenchError(f"after signing in, GET /console answered {home.status_code}")
    return csrf_token(home)  # bound to the new session


def pages(demo: Demo, blocked_account: str, approval_id: str, csrf: str) -> list[Page]:
    payment = next(p for p in demo.payments if p["account_id"] != blocked_account)
    owner = next(a["customer_id"] for a in demo.accounts if a["id"] == payment["account_id"])
    emails = [(c["id"], c["email"]) for c in demo.customers]
    approval_link = f'href="/console/approvals/{approval_id}"'

    def search_form(i: int) -> Mapping[str, str]:
        return {"q": emails[i % len(emails)][1], "csrf_token": csrf}

    def searched(i: int) -> tuple[str, ...]:
        return (f'href="/console/customers/{emails[i % len(emails)][0]}"',)

    return [
        Page("home", "GET", "/console", ("<title>Home · opsgate</title>", approval_link)),
        Page(
            "search results",
            "POST",
            "/console/search",
            ("<title>Search · opsgate</title>", "<h2>Customers</h2>"),
            search_form,
            "POST /console/search (q=<email>)",
            searched,
        ),
        Page(
            "customer",
            "GET",
            f"/console/customers/{owner}",
            (f"<title>Customer {owner} · opsgate</title>", payment["id"]),
            shown="GET /console/customers/<id>",
        ),
        Page(
            "reverse form",
            "GET",
            f"/console/actions/payment.reverse?target=payment:{payment['id']}",
            ("<title>Reverse payment · opsgate</title>", 'name="payload.amount_minor"'),
            shown="GET /console/actions/payment.reverse?target=payment:<id>",
        ),
        Page(
            "approvals",
            "GET",
            "/console/approvals",
            ("<title>Approvals · opsgate</title>", approval_link),
        ),
        Page(
            "approval",
            "GET",
            f"/console/approvals/{approval_id}",
            ("<title>Unblock account · approval · opsgate</title>", 'name="decision"'),
            shown="GET /console/approvals/<id>",
        ),
        Page("audit log", "GET", "/console/audit", ("<title>Audit log · opsgate</title>",)),
        Page(
            "metrics",
            "GET",
            "/console/metrics",
            ("<title>Approval metrics · opsgate</title>", '<svg class="chart"'),
        ),
    ]


def _check(page: Page, response: httpx.Response, i: int) -> None:
    if response.status_code != 200:
        where = response.headers.get("location", "")
        raise BenchError(
            f"console page {page.name}: {page.method} {page.path} answered "
            f"{response.status_code}, not 200"
            + (f" (redirect to {where})" if where else "")
            + f": {response.text[:500]}"
        )
    expected = page.expect + (page.expect_each(i) if page.expect_each else ())
    missing = [text for text in expected if text not in response.text]
    if missing:
        raise BenchError(
            f"console page {page.name}: {page.method} {page.path} is not the expected page "
            f"(missing {missing!r}): {response.text[:500]}"
        )


def _request(client: httpx.Client, page: Page, i: int) -> tuple[float, httpx.Response]:
    form = dict(page.form(i)) if page.form else None
    started = time.perf_counter()
    response = client.request(page.method, page.path, data=form)
    return time.perf_counter() - started, response


def measure(
    client: httpx.Client, server: Server, chosen: list[Page], settings: Settings
) -> dict[str, Stats]:
    counter = dict.fromkeys((p.name for p in chosen), 0)

    def block(page: Page, count: int) -> RunResult:
        latencies = []
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        for _ in range(count):
            if time.perf_counter() > settings.deadline:
                raise BenchError("the time budget ran out (raise --max-seconds?)")
            i = counter[page.name]
            counter[page.name] += 1
            seconds, response = _request(client, page, i)
            latencies.append(seconds)
            _check(page, response, i)
        elapsed = time.perf_counter() - started
        cpu_after = server.cpu_seconds()
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return RunResult(latencies, elapsed, cpu)

    for page in chosen:
        block(page, WARMUP_PER_PAGE)  # first renders compile templates, fill caches
    server.check_alive()
    runs: dict[str, list[RunResult]] = {p.name: [] for p in chosen}
    for round_number, size in enumerate(split(REQUESTS_PER_PAGE, ROUNDS)):
        order = chosen if round_number % 2 == 0 else list(reversed(chosen))
        for page in order:
            runs[page.name].append(block(page, size))
    server.check_alive()
    return {name: Stats.of(results) for name, results in runs.items()}


def _cpu(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


@register
class ConsolePages(StandaloneScenario):
    name = "console_pages"
    description = (
        f"the console's pages on SQLite with the demo data, signed in as {REVIEWER} "
        f"(target: median < {TARGET_MS:g} ms per page)"
    )

    def notes(self, settings: Settings) -> list[str]:
        return [
            f"console_pages: one keep-alive client signed in to the console as {REVIEWER} "
            f"(ops lead) with the demo password, one pending approval (account.unblock); per "
            f"page {WARMUP_PER_PAGE} warm-up requests, then {REQUESTS_PER_PAGE} measured, one "
            f"at a time, in {ROUNDS} rounds over all pages. Latency as the client sees it; "
            f"ratio = median / {TARGET_MS:g} ms. The search form's POST and every audit-log "
            f"read are audited, so the audit trail grows as it runs. SQLite only."
        ]

    def run(self, settings: Settings, backend: str, console: Console) -> list[Result]:
        if backend != BACKEND:
            console.print(f"  console_pages: the target is stated for SQLite; nothing on {backend}")
            return []
        with PROVISIONERS[backend]() as database:
            console.print(f"  database {database.label}: migrating and seeding (demo passwords)")
            demo = seed(database.url)
            log_path = settings.results_dir / f"server-{backend}-{self.name}.log"
            env = {"OPSGATE_SECRET_KEY": secrets.token_urlsafe(48)}
            with (
                serve(database.url, log_path, env=env) as server,
                httpx.Client(
                    base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_S
                ) as client,
            ):
                console.print(f"  opsgate serve on {server.base_url} (log: {log_path})")
                blocked = demo.accounts[0]["id"]
                approval_id = pending_approval(client, demo, blocked)
                csrf = sign_in(client, REVIEWER)
                chosen = pages(demo, blocked, approval_id, csrf)
                stats = measure(client, server, chosen, settings)
        rows: list[Result] = []
        for page in chosen:
            s = stats[page.name]
            under = s.median_ms < TARGET_MS
            console.print(
                f"  {page.name}: median {s.median_ms:.2f} ms, p95 {s.p95_ms:.2f} ms "
                f"({'under' if under else 'NOT under'} {TARGET_MS:g} ms)"
            )
            rows.append(
                Measurement(
                    scenario=self.name,
                    table=TABLE,
                    backend=backend,
                    columns=(
                        ("page", page.name),
                        ("request", page.label()),
                        ("median ms", f"{s.median_ms:.2f}"),
                        ("p95 ms", f"{s.p95_ms:.2f}"),
                        ("server\nCPU\nms/req", _cpu(s.server_cpu_ms)),
                        (f"median\n< {TARGET_MS:g} ms", "yes" if under else "no"),
                    ),
                    ratio=s.median_ms / TARGET_MS,
                    target_ratio=1.0,
                    data={
                        "page": page.name,
                        "method": page.method,
                        "request": page.label(),
                        "path": page.path,
                        "median_ms": s.median_ms,
                        "p95_ms": s.p95_ms,
                        "mean_ms": s.mean_ms,
                        "min_ms": s.min_ms,
                        "max_ms": s.max_ms,
                        "server_cpu_ms": s.server_cpu_ms,
                        "requests": s.requests,
                        "warmup": WARMUP_PER_PAGE,
                        "target_ms": TARGET_MS,
                        "median_under_target": under,
                    },
                )
            )
        return rows
