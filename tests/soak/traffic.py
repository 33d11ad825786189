"""Mixed operator traffic against several `opsgate serve` processes, and a killer that SIGKILLs
them and the ledger service at random moments and starts them again on the same ports.

Every answer a client got is kept (`Answer`), so the invariant checker can hold what the
clients were told against what the databases say.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from opsgate.db.engine import Database
from tests.remote_stack import RemoteStack, _spawn, _wait_healthy, opsgate_cli
from tests.servers import Server
from tests.step_ups import step_up_header

REQUESTERS = ("alice", "bob", "olga")  # may start payment.reverse
ADJUSTERS = ("rita", "raj", "olga")  # may start account.adjust_balance
REVIEWERS = ("rita", "raj", "olga")  # may approve both


@dataclass(frozen=True)
class Answer:
    """One answer a client was given (`status` 0: the connection failed)."""

    kind: str
    actor: str
    key: str | None
    status: int
    body: dict[str, Any]
    request_id: str | None


@dataclass
class Job:
    kind: str
    actor: str
    path: str
    body: dict[str, Any]
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Traffic:
    """Operators and reviewers sending requests to any of the stack's servers until `stop`."""

    stack: RemoteStack
    db: Database
    tokens: dict[str, str]
    user_ids: dict[str, str]
    payments: list[str]
    accounts: list[str]
    customers: list[str]
    seed: int = 7
    answers: list[Answer] = field(default_factory=list)
    to_retry: list[Job] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _keys: int = 0

    def urls(self) -> list[str]:
        return [server.base_url for server in self.stack.servers]

    def send(self, job: Job, base_url: str) -> Answer:
        headers = {"Authorization": f"Bearer {self.tokens[job.actor]}"} | job.headers
        if job.key is not None:
            headers["Idempotency-Key"] = job.key
        try:
            response = httpx.post(
                f"{base_url}{job.path}", json=job.body, headers=headers, timeout=60
            )
        except httpx.TransportError:
            answer = Answer(job.kind, job.actor, job.key, 0, {}, None)
        else:
            try:
                body = response.json()
            except ValueError:
                body = {"raw": response.text[:200]}
            answer = Answer(
                job.kind,
                job.actor,
                job.key,
                response.status_code,
                body,
                response.headers.get("X-Request-ID"),
            )
        with self._lock:
            self.answers.append(answer)
            # The outcome is not known to the client: a careful client retries with the key.
            if job.key is not None and (answer.status == 0 or answer.status >= 500):
                self.to_retry.append(job)
        return answer

    def _new_key(self, prefix: str) -> str:
        with self._lock:
            self._keys += 1
            return f"soak-{prefix}-{self.seed}-{self._keys}"

    def _job(self, rng: random.Random) -> Job | Callable[[str], None]:
        roll = rng.random()
        if roll < 0.40:
            amount = rng.choice((rng.randint(100, 9_000), rng.randint(10_001, 40_000)))
            return Job(
                "reverse",
                rng.choice(REQUESTERS),
                "/api/v1/actions/payment.reverse",
                {
                    "target": f"payment:{rng.choice(self.payments)}",
                    "payload": {"amount_minor": amount, "reason_code": "customer_dispute"},
                    "reason": "soak: customer dispute",
                },
                self._new_key("reverse"),
            )
        if roll < 0.55:
            return Job(
                "note",
                rng.choice(("alice", "bob", "rita")),
                "/api/v1/actions/customer.add_note",
                {
                    "target": f"customer:{rng.choice(self.customers)}",
                    "payload": {"text": f"soak note {rng.randint(0, 10**6)}"},
                    "reason": "soak: note",
                },
                self._new_key("note") if rng.random() < 0.5 else None,
            )
        if roll < 0.65:
            return Job(
                "adjust",
                rng.choice(ADJUSTERS),
                "/api/v1/actions/account.adjust_balance",
                {
                    "target": f"account:{rng.choice(self.accounts)}",
                    "payload": {"amount_minor": rng.choice((-1, 1)) * rng.randint(100, 5_000),
                                "memo": "soak correction"},
                    "reason": "soak: correction",
                },
                self._new_key("adjust"),
            )  # fmt: skip
        with self._lock:
            retry = self.to_retry.pop(0) if self.to_retry and roll < 0.75 else None
        if retry is not None:
            return retry
        return self._approve_one(rng)

    def _approve_one(self, rng: random.Random) -> Callable[[str], None]:
        reviewer = rng.choice(REVIEWERS)

        def approve(base_url: str) -> None:
            headers = {"Authorization": f"Bearer {self.tokens[reviewer]}"}
            try:
                listed = httpx.get(
                    f"{base_url}/api/v1/approvals",
                    params={"status": "pending", "limit": 20},
                    headers=headers,
                    timeout=30,
                )
            except httpx.TransportError:
                return
            if listed.status_code != 200:
                return
            # Not their own; the server refuses a second vote or a self-approval anyway.
            mine = self.user_ids[reviewer]
            open_ones = [i for i in listed.json()["items"] if i["requester"]["id"] != mine]
            if not open_ones:
                return
            chosen = rng.choice(open_ones)
            # Money approvals need a fresh proof of identity (core/approvals/step_up.py).
            grant = step_up_header(self.db, self.tokens[reviewer])
            self.send(
                Job(
                    "approve",
                    reviewer,
                    f"/api/v1/approvals/{chosen['id']}/approve",
                    {"comment": "soak: checked"},
                    headers=grant,
                ),
                base_url,
            )

        return approve

    def client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        while not self.stop.is_set():
            urls = self.urls()
            work = self._job(rng)
            base_url = rng.choice(urls)
            if isinstance(work, Job):
                answer = self.send(work, base_url)
                # A hasty client repeats itself at once, sometimes to another process.
                if work.key is not None and rng.random() < 0.15 and answer.status != 0:
                    self.send(work, rng.choice(urls))
            else:
                work(base_url)

    def retry_all(self) -> None:
        """What every careful client does at the end: retry each key whose outcome it never
        learned, until it does (or the server keeps saying it cannot know yet)."""
        for _round in range(5):
            with self._lock:
                pending, self.to_retry = self.to_retry, []
            if not pending:
                return
            for job in pending:
                self.send(job, random.choice(self.urls()))
            time.sleep(0.5)


@dataclass
class Killer:
    """SIGKILLs a random opsgate server or the ledger every few seconds, then starts it again
    on the same port; at most `max_kills` times."""

    stack: RemoteStack
    max_kills: int
    seed: int = 11
    kills: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(self.seed)
        while not self.stop.wait(rng.uniform(1.5, 5.0)) and len(self.kills) < self.max_kills:
            if rng.random() < 0.3:
                self._kill_ledger(rng)
            else:
                self._kill_server(rng.randrange(len(self.stack.servers)), rng)

    def _kill_server(self, index: int, rng: random.Random) -> None:
        server = self.stack.servers[index]
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        self.kills.append(f"opsgate-{index}")
        time.sleep(rng.uniform(0.2, 1.5))
        port = int(server.base_url.rsplit(":", 1)[1])
        command = opsgate_cli("serve", "--port", str(port))
        restarted = _spawn(command, os.environ | self.stack.opsgate_env(), server.log_path, port)
        self.stack.servers[index] = restarted
        _wait_healthy(restarted, "/api/v1/healthz", time.monotonic() + 60)

    def _kill_ledger(self, rng: random.Random) -> None:
        ledger = self.stack.ledger
        assert ledger.server is not None
        os.kill(ledger.server.process.pid, signal.SIGKILL)
        ledger.server.process.wait()
        self.kills.append("ledger")
        time.sleep(rng.uniform(0.2, 1.5))
        restarted: Server = ledger.spawn()
        _wait_healthy(restarted, "/healthz", time.monotonic() + 60)
