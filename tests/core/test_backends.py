"""The client for remote backends (core/integrations/backends.py), against a real HTTP server.

The fake backend runs in uvicorn on 127.0.0.1, verifies every request's signature with
core/signing.verify, records what it saw, and answers as each test scripts it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opsgate.core.errors import BackendRejected, BackendTimeout, BackendUnavailable, ProblemCode
from opsgate.core.integrations.backends import (
    MAX_ANSWER_BYTES,
    BackendAnswer,
    BackendClient,
    BackendOutcome,
    BackendRequest,
    LookupAnswer,
    LookupStatus,
    derive_key,
)
from opsgate.core.integrations.config import Backend
from opsgate.core.integrations.signing import SignatureError, sign_response, verify_request
from opsgate.core.tracing import parse_traceparent
from tests.servers import free_port

SECRET = "ledger-secret-" + "x" * 30
NEW_SECRET = "ledger-secret-" + "n" * 30
OTHER_SECRET = "not-the-secret-" + "o" * 30
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_KEY = "caller-key-7f3a9c"
STALL_SECONDS = 0.6  # past the 0.2 s read timeout of every test backend
ACTION_PATH = "/v1/actions/payment.reverse"
RESULT = {"result": {"reversal_id": "rev_1"}, "before": {"reversed_minor": 0}, "after": {}}


# Sign the answer with the secret that verified the request, as the contract asks.
VERIFYING = "<the secret that verified the request>"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: `signed_with` None sends it unsigned; `bound_to_first` binds its
    signature to the first request the backend saw instead of the one it answers."""

    status: int = 200
    body: bytes = json.dumps(RESULT).encode()
    signed_with: str | None = VERIFYING
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    bound_to_first: bool = False


def problem(status: int, code: str, detail: str = "") -> Reply:
    return Reply(status, json.dumps({"code": code, "detail": detail}).encode())


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    refused: str | None  # why the signature did not verify, or None

    @property
    def signature(self) -> str:
        return self.headers.get("x-opsgate-signature", "").removeprefix("v2=")


class FakeBackend:
    """A backend that checks signatures and follows a script (its last step repeats)."""

    def __init__(self) -> None:
        self.url = ""
        self.reset()

    def reset(self) -> None:
        self.accepted = [SECRET]
        self.script: list[Reply] = [Reply()]
        self.operations: dict[str, Reply] = {}
        self.seen: list[Seen] = []

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.scope["raw_path"].decode()
        if request.url.query:
            path += "?" + request.url.query
        verified_with: str | None = None
        refused: str | None = "no accepted secret"
        try:
            verified = verify_request(
                self.accepted, request.method, path, body, request.headers, now=time.time()
            )
        except SignatureError as exc:
            refused = str(exc)
        else:
            verified_with, refused = verified.secret, None
        seen = Seen(request.method, path, dict(request.headers), body, refused)
        self.seen.append(seen)
        if verified_with is None:
            # It cannot know whom it answers: a refusal of a request that did not verify is
            # not signed (docs/backends.md).
            reply = replace(problem(401, "bad_signature"), signed_with=None)
        elif request.method == "GET":
            key = path.rsplit("/", 1)[-1]
            reply = self.operations.get(key, problem(404, "operation_not_found"))
        else:
            reply = self.script[min(len(self.posts()) - 1, len(self.script) - 1)]
        if reply.stall:
            await asyncio.sleep(reply.stall)
        headers = dict(reply.headers) | {"content-type": "application/json"}
        if reply.signed_with is not None:
            signer = verified_with if reply.signed_with == VERIFYING else reply.signed_with
            bound = self.seen[0] if reply.bound_to_first else seen
            replayed = reply.headers.get("Idempotent-Replayed") == "true"
            headers |= sign_response(
                signer or "",
                bound.signature,
                reply.status,
                reply.body,
                time.time(),
                replayed=replayed,
            )
        return Response(reply.body, status_code=reply.status, headers=headers)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBackend]:
    fake = FakeBackend()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(fake.app(), log_level="critical", lifespan="off", access_log=False)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the fake backend did not start"
        time.sleep(0.02)
    yield fake
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def fake(server: FakeBackend) -> FakeBackend:
    server.reset()
    return server


class FakeTime:
    """The real clock plus every pause taken: backoff costs no real time, yet signatures
    and the deadline see it pass."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def clock(self) -> float:
        return time.time() + sum(self.pauses)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def client(fake_time: FakeTime) -> Iterator[BackendClient]:
    with BackendClient(sleep=fake_time.sleep, clock=fake_time.clock) as backend_client:
        yield backend_client


def ledger(fake: FakeBackend, **changes: Any) -> Backend:
    settings: dict[str, Any] = {
        "name": "ledger",
        "url": fake.url,
        "actions": frozenset({"payment.reverse"}),
        "secret": SECRET,
        "connect_timeout": 0.2,
        "timeout": 0.2,
        "max_attempts": 3,
        "backoff": 0.05,
    }
    return Backend(**(settings | changes))


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def reversal(**changes: Any) -> BackendRequest:
    key = derive_key(actor_id="usr_olga", action="payment.reverse", client_key=CLIENT_KEY)
    request = BackendRequest(
        action="payment.reverse",
        target="payment:pay_01",
        payload={"amount_minor": 2500, "reason_code": "customer_dispute"},
        reason="Customer disputed the charge",
        actor_id="usr_olga",
        actor_name="olga",
        actor_roles=("ops_lead", "finance"),
        request_id="req_0001",
        idempotency_key=key,
        trace_id=TRACE_ID,
    )
    return replace(request, **changes)


def run(fake: FakeBackend, client: BackendClient, *script: Reply, **backend: Any) -> BackendAnswer:
    fake.script = list(script) or [Reply()]
    return client.call(ledger(fake, **backend), reversal())


# --- the derived idempotency key ---------------------------------------------------------


def test_a_derived_key_is_og1_and_a_sha256_and_is_deterministic() -> None:
    first = derive_key(actor_id="usr_1", action="payment.reverse", client_key="k1")
    assert first == derive_key(actor_id="usr_1", action="payment.reverse", client_key="k1")
    assert first.startswith("og1_")
    assert len(first) == 4 + 64
    int(first[4:], 16)


def test_a_derived_key_never_contains_the_callers_key() -> None:
    key = derive_key(actor_id="usr_1", action="payment.reverse", client_key="abcdef0123")
    assert "abcdef0123" not in key


@pytest.mark.parametrize(
    "other",
    [
        {"actor_id": "usr_2", "action": "payment.reverse", "client_key": "k1"},
        {"actor_id": "usr_1", "action": "account.adjust_balance", "client_key": "k1"},
        {"actor_id": "usr_1", "action": "payment.reverse", "client_key": "k2"},
        {"actor_id": "usr_1", "action": "payment.reverse", "request_id": "k1"},
        {"actor_id": "usr_1", "action": "payment.reverse", "approval_id": "k1"},
    ],
    ids=["actor", "action", "client key", "request ID", "approval ID"],
)
def test_a_derived_key_changes_with_what_makes_the_action_the_same(other: dict[str, str]) -> None:
    assert derive_key(**other) != derive_key(
        actor_id="usr_1", action="payment.reverse", client_key="k1"
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("ab", "c.d", "e"), ("a", "bc.d", "e")),  # plain concatenation would collide
        (("a,b", "c.d", "e"), ("a", "b,c.d", "e")),  # so would a separator
        (('a", "b', "c.d", "e"), ("a", 'b", "c.d', "e")),  # and quoting without escapes
    ],
)
def test_the_encoding_is_unambiguous(
    one: tuple[str, str, str], other: tuple[str, str, str]
) -> None:
    first, second = (
        derive_key(actor_id=actor, action=action, client_key=key)
        for actor, action, key in (one, other)
    )
    assert first != second


def test_the_approval_wins_and_names_the_execution_whoever_triggers_it() -> None:
    by_olga = derive_key(
        actor_id="usr_olga", action="payment.reverse", approval_id="apr_1", client_key="k"
    )
    by_sam = derive_key(actor_id="usr_sam", action="payment.reverse", approval_id="apr_1")
    assert by_olga == by_sam
    assert by_olga != derive_key(actor_id="usr_olga", action="payment.reverse", client_key="k")


def test_the_client_key_wins_over_the_request_id() -> None:
    assert derive_key(
        actor_id="usr_1", action="payment.reverse", client_key="k", request_id="req_1"
    ) == derive_key(actor_id="usr_1", action="payment.reverse", client_key="k", request_id="r2")
    assert derive_key(actor_id="usr_1", action="payment.reverse", request_id="req_1") != derive_key(
        actor_id="usr_1", action="payment.reverse", request_id="req_2"
    )


def test_a_key_needs_something_to_derive_from() -> None:
    with pytest.raises(ValueError, match="needs an approval ID"):
        derive_key(actor_id="usr_1", action="payment.reverse")


# --- the call ------------------------------------------------------------------------------


def test_the_body_is_the_documented_canonical_json() -> None:
    request = reversal(approval_id="apr_1", execution_request_id="req_exec")
    assert json.loads(request.body()) == {
        "action": "payment.reverse",
        "target": "payment:pay_01",
        "payload": {"amount_minor": 2500, "reason_code": "customer_dispute"},
        "reason": "Customer disputed the charge",
        "actor": {"id": "usr_olga", "name": "olga", "roles": ["finance", "ops_lead"]},
        "request_id": "req_0001",
        "approval_id": "apr_1",
        "execution_request_id": "req_exec",
    }
    assert (
        request.body()
        == json.dumps(
            json.loads(request.body()), separators=(",", ":"), sort_keys=True, ensure_ascii=False
        ).encode()
    )


def test_a_signed_200_succeeds_in_one_attempt(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client)
    assert (answer.outcome, answer.http_status, answer.attempts) == (
        BackendOutcome.SUCCEEDED,
        200,
        1,
    )
    assert answer.body == RESULT
    assert answer.error is None
    assert answer.replayed is False
    assert answer.problem() is None


def test_the_request_is_signed_and_carries_the_headers_and_the_exact_body(
    fake: FakeBackend, client: BackendClient
) -> None:
    run(fake, client)
    (seen,) = fake.posts()
    assert seen.refused is None
    assert seen.path == ACTION_PATH
    assert seen.body == reversal().body()
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-request-id"] == "req_0001"
    assert seen.headers["idempotency-key"] == reversal().idempotency_key
    assert seen.headers["user-agent"].startswith("opsgate/")
    parent = parse_traceparent(seen.headers["traceparent"])
    assert parent is not None
    assert parent.trace_id == TRACE_ID


def test_each_attempt_is_signed_v2_with_its_own_nonce(
    fake: FakeBackend, client: BackendClient
) -> None:
    run(fake, client, problem(503, "maintenance"), Reply())
    first, second = fake.posts()
    assert first.headers["x-opsgate-signature"].startswith("v2=")
    assert first.headers["x-opsgate-nonce"] != second.headers["x-opsgate-nonce"]
    assert first.signature != second.signature


def test_an_answer_bound_to_an_earlier_attempt_is_unknown_never_success(
    fake: FakeBackend, client: BackendClient
) -> None:
    answer = run(fake, client, Reply(stall=STALL_SECONDS), Reply(bound_to_first=True))
    assert (answer.outcome, answer.attempts, answer.http_status) == (BackendOutcome.UNKNOWN, 3, 200)
    assert answer.body is None
    assert answer.error is not None
    assert "answer not verified: the signature does not match this request" in answer.error


def test_an_answer_bound_to_another_request_cannot_refuse_either(
    fake: FakeBackend, client: BackendClient
) -> None:
    client.call(ledger(fake), reversal(request_id="req_other"))
    fake.script = [replace(problem(422, "insufficient_funds"), bound_to_first=True)]
    answer = client.call(ledger(fake), reversal())
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNKNOWN, 3)


def test_the_callers_own_key_is_never_forwarded(fake: FakeBackend, client: BackendClient) -> None:
    run(fake, client)
    (seen,) = fake.posts()
    assert CLIENT_KEY not in json.dumps(seen.headers)
    assert CLIENT_KEY.encode() not in seen.body


def test_a_path_prefix_in_the_url_is_part_of_what_is_signed(
    fake: FakeBackend, client: BackendClient
) -> None:
    answer = run(fake, client, url=fake.url + "/ledger")
    (seen,) = fake.posts()
    assert seen.path == "/ledger" + ACTION_PATH
    assert seen.refused is None
    assert answer.outcome is BackendOutcome.SUCCEEDED


def test_a_replayed_answer_is_reported(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, Reply(headers={"Idempotent-Replayed": "true"}))
    assert answer.outcome is BackendOutcome.SUCCEEDED
    assert answer.replayed is True


@pytest.mark.parametrize(
    "reply",
    [Reply(signed_with=None), Reply(signed_with=OTHER_SECRET)],
    ids=["unsigned", "signed with another secret"],
)
def test_a_200_that_does_not_verify_is_unknown_never_success(
    fake: FakeBackend, client: BackendClient, reply: Reply
) -> None:
    answer = run(fake, client, reply)
    assert (answer.outcome, answer.attempts, answer.http_status) == (BackendOutcome.UNKNOWN, 3, 200)
    assert answer.body is None
    assert answer.error is not None
    assert "answer not verified" in answer.error
    assert len({s.headers["idempotency-key"] for s in fake.posts()}) == 1
    assert all(s.refused is None for s in fake.posts())
    reported = answer.problem()
    assert isinstance(reported, BackendTimeout)
    assert reported.status == 504
    assert reported.extra == {"backend": "ledger", "outcome": "unknown"}


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<html>ok</html>"),
        Reply(body=b'{"result": "done"}'),
        Reply(body=b"[1, 2]"),
        Reply(body=b'{"result": {}, "pad": "' + b"x" * MAX_ANSWER_BYTES + b'"}'),
    ],
    ids=["not JSON", "result not an object", "array", "too large"],
)
def test_a_signed_200_outside_the_contract_is_unknown_never_success(
    fake: FakeBackend, client: BackendClient, reply: Reply
) -> None:
    answer = run(fake, client, reply)
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNKNOWN, 3)


def test_a_timeout_then_an_answer_retries_with_the_same_key_re_signed(
    fake: FakeBackend, fake_time: FakeTime
) -> None:
    with BackendClient(sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 1.0) as client:
        answer = run(fake, client, Reply(stall=STALL_SECONDS), Reply(), backoff=1.5)
    assert (answer.outcome, answer.attempts) == (BackendOutcome.SUCCEEDED, 2)
    first, second = fake.posts()
    assert first.refused is None
    assert second.refused is None
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.body == second.body
    assert int(second.headers["x-opsgate-timestamp"]) > int(first.headers["x-opsgate-timestamp"])
    assert first.headers["x-opsgate-signature"] != second.headers["x-opsgate-signature"]
    assert first.headers["traceparent"] != second.headers["traceparent"]  # a span per attempt
    assert fake_time.pauses == [1.5]


def test_a_backend_that_always_times_out_is_unknown_after_every_attempt(
    fake: FakeBackend, client: BackendClient
) -> None:
    answer = run(fake, client, Reply(stall=STALL_SECONDS))
    assert (answer.outcome, answer.attempts, answer.http_status) == (
        BackendOutcome.UNKNOWN,
        3,
        None,
    )
    assert answer.error is not None
    assert "no answer within 0.2 s" in answer.error
    assert len(fake.posts()) == 3


def test_503_then_200_succeeds_on_the_retry(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(503, "maintenance"), Reply())
    assert (answer.outcome, answer.attempts) == (BackendOutcome.SUCCEEDED, 2)


def test_503_every_time_is_unavailable(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(503, "maintenance"))
    assert (answer.outcome, answer.attempts, answer.http_status) == (
        BackendOutcome.UNAVAILABLE,
        3,
        503,
    )
    reported = answer.problem()
    assert isinstance(reported, BackendUnavailable)
    assert reported.status == 503
    assert reported.extra == {"backend": "ledger"}


def test_an_unsigned_503_is_not_believed(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, Reply(503, b"Service Unavailable", signed_with=None))
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNKNOWN, 3)


def test_503_after_a_timeout_stays_unknown(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, Reply(stall=STALL_SECONDS), problem(503, "maintenance"))
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNKNOWN, 3)
    assert answer.error is not None
    assert "an earlier attempt may have run" in answer.error


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_server_error_is_retried_then_unknown(
    fake: FakeBackend, client: BackendClient, status: int
) -> None:
    answer = run(fake, client, problem(status, "internal_error"))
    assert (answer.outcome, answer.attempts, answer.http_status) == (
        BackendOutcome.UNKNOWN,
        3,
        status,
    )


def test_in_flight_then_200_succeeds(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(409, "idempotency_in_flight"), Reply())
    assert (answer.outcome, answer.attempts) == (BackendOutcome.SUCCEEDED, 2)


def test_in_flight_every_time_is_unknown(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(409, "idempotency_in_flight"))
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNKNOWN, 3)


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (problem(422, "insufficient_funds", "Only 1000 can be reversed."), "insufficient_funds"),
        (problem(409, "already_reversed"), "already_reversed"),
        (Reply(404, b"Not Found"), "http_404"),
        (problem(400, "Not A Code!"), "http_400"),
    ],
    ids=["422 problem", "409 problem", "404 without a problem", "400 with a bad code"],
)
def test_a_refusal_is_final_and_never_retried(
    fake: FakeBackend, client: BackendClient, reply: Reply, code: str
) -> None:
    answer = run(fake, client, reply, Reply())
    assert (answer.outcome, answer.attempts, answer.http_status) == (
        BackendOutcome.REJECTED,
        1,
        reply.status,
    )
    assert len(fake.posts()) == 1
    assert answer.backend_code == code
    reported = answer.problem()
    assert isinstance(reported, BackendRejected)
    assert reported.code is ProblemCode.BACKEND_REJECTED
    assert reported.extra == {"backend": "ledger", "backend_code": code}


def test_a_refusal_carries_the_backends_detail(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(422, "insufficient_funds", "Only 1000 can be reversed."))
    reported = answer.problem()
    assert reported is not None
    assert reported.detail.endswith("(insufficient_funds): Only 1000 can be reversed.")


def test_an_unsigned_refusal_is_not_believed(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, replace(problem(422, "insufficient_funds"), signed_with=None))
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNKNOWN, 3)


def test_a_verified_401_is_unavailable_at_once(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(401, "bad_signature"))
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNAVAILABLE, 1)
    assert answer.error == "HTTP 401: the backend refused our signature"


def test_a_secret_the_backend_does_not_hold_is_unknown_and_says_why(
    fake: FakeBackend, client: BackendClient
) -> None:
    fake.accepted = [NEW_SECRET]
    answer = run(fake, client)
    assert (answer.outcome, answer.attempts, answer.http_status) == (BackendOutcome.UNKNOWN, 3, 401)
    assert all(seen.refused == "the signature does not match" for seen in fake.posts())
    assert answer.error is not None
    assert "the backend refused our signature" in answer.error
    assert SECRET not in answer.error
    assert NEW_SECRET not in answer.error


def test_during_a_rotation_the_previous_secret_still_works(
    fake: FakeBackend, client: BackendClient
) -> None:
    fake.accepted = [NEW_SECRET, SECRET]
    assert run(fake, client).outcome is BackendOutcome.SUCCEEDED
    assert client.call(ledger(fake, secret=NEW_SECRET), reversal()).outcome is (
        BackendOutcome.SUCCEEDED
    )


def test_a_refused_connection_is_retried_then_unavailable(client: BackendClient) -> None:
    backend = Backend("ledger", closed_port_url(), frozenset({"payment.reverse"}), SECRET, 0.2, 0.2)
    answer = client.call(backend, reversal())
    assert (answer.outcome, answer.attempts, answer.http_status) == (
        BackendOutcome.UNAVAILABLE,
        3,
        None,
    )
    assert answer.error == "could not connect"


# --- bounds --------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap(
    fake: FakeBackend, fake_time: FakeTime
) -> None:
    with BackendClient(
        sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 1.0, backoff_cap_seconds=0.25
    ) as client:
        answer = run(fake, client, problem(503, "maintenance"), max_attempts=5, backoff=0.1)
    assert answer.attempts == 5
    assert fake_time.pauses == pytest.approx([0.1, 0.2, 0.25, 0.25])


def test_backoff_is_scaled_by_the_jitter(fake: FakeBackend, fake_time: FakeTime) -> None:
    with BackendClient(sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 0.25) as client:
        run(fake, client, problem(503, "maintenance"), max_attempts=3, backoff=0.4)
    assert fake_time.pauses == pytest.approx([0.1, 0.2])


def test_the_overall_deadline_stops_the_retries(fake: FakeBackend, fake_time: FakeTime) -> None:
    with BackendClient(
        sleep=fake_time.sleep, clock=fake_time.clock, jitter=lambda: 1.0, deadline_seconds=5
    ) as client:
        answer = run(fake, client, problem(503, "maintenance"), max_attempts=10, backoff=1.0)
    assert answer.attempts == 3  # pauses 1 and 2; the next (4) would pass the deadline
    assert fake_time.pauses == [1.0, 2.0]
    assert answer.outcome is BackendOutcome.UNAVAILABLE


def test_one_attempt_means_no_retry(fake: FakeBackend, client: BackendClient) -> None:
    answer = run(fake, client, problem(503, "maintenance"), Reply(), max_attempts=1)
    assert (answer.outcome, answer.attempts) == (BackendOutcome.UNAVAILABLE, 1)


def test_threads_share_one_client(fake: FakeBackend, client: BackendClient) -> None:
    backend = ledger(fake)
    keys = [
        derive_key(actor_id="usr_1", action="payment.reverse", request_id=f"r{n}") for n in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda key: client.call(backend, reversal(idempotency_key=key)), keys)
        )
    assert [a.outcome for a in answers] == [BackendOutcome.SUCCEEDED] * 8
    assert sorted(s.headers["idempotency-key"] for s in fake.posts()) == sorted(keys)


def test_a_closed_client_refuses_calls(fake: FakeBackend) -> None:
    client = BackendClient()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.call(ledger(fake), reversal())
    assert fake.posts() == []


def test_each_attempt_is_logged_without_secrets(
    fake: FakeBackend, client: BackendClient, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    run(fake, client, problem(503, "maintenance"), Reply())
    lines = [line for line in logs() if line["event"] == "backend_call"]
    assert [(x["attempt"], x["outcome"], x["http_status"]) for x in lines] == [
        (1, "unavailable", 503),
        (2, "succeeded", 200),
    ]
    assert all(x["backend"] == "ledger" and x["action"] == "payment.reverse" for x in lines)
    assert all(isinstance(x["duration_ms"], int) for x in lines)
    assert SECRET not in json.dumps(logs())


def test_no_secret_in_an_answer(fake: FakeBackend, client: BackendClient) -> None:
    fake.accepted = [NEW_SECRET]
    answer = run(fake, client)
    assert SECRET not in repr(answer)
    assert SECRET not in repr(ledger(fake))


# --- reconciliation lookups ----------------------------------------------------------------


KEY = derive_key(actor_id="usr_olga", action="payment.reverse", client_key=CLIENT_KEY)


def stored(status: str, **fields: Any) -> Reply:
    return Reply(body=json.dumps({"status": status} | fields).encode())


def look(fake: FakeBackend, client: BackendClient, reply: Reply | None = None) -> LookupAnswer:
    if reply is not None:
        fake.operations[KEY] = reply
    return client.lookup(ledger(fake), KEY, request_id="req_reconcile")


def test_a_completed_operation_gives_the_stored_answer(
    fake: FakeBackend, client: BackendClient
) -> None:
    answer = look(fake, client, stored("completed", http_status=200, response=RESULT))
    assert answer == LookupAnswer(LookupStatus.COMPLETED, http_status=200, response=RESULT)
    assert answer.outcome() is BackendOutcome.SUCCEEDED
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.body, seen.refused) == (
        "GET",
        f"/v1/operations/{KEY}",
        b"",
        None,
    )
    assert seen.headers["x-request-id"] == "req_reconcile"


def test_a_completed_refusal_is_judged_a_rejection(
    fake: FakeBackend, client: BackendClient
) -> None:
    answer = look(
        fake, client, stored("completed", http_status=422, response={"code": "insufficient_funds"})
    )
    assert answer.status is LookupStatus.COMPLETED
    assert answer.outcome() is BackendOutcome.REJECTED


def test_an_operation_in_progress(fake: FakeBackend, client: BackendClient) -> None:
    answer = look(fake, client, stored("in_progress"))
    assert answer.status is LookupStatus.IN_PROGRESS
    assert answer.outcome() is None


def test_a_key_the_backend_never_saw(fake: FakeBackend, client: BackendClient) -> None:
    assert look(fake, client).status is LookupStatus.NOT_FOUND


@pytest.mark.parametrize(
    "reply",
    [
        Reply(404, b'{"detail": "Not Found"}'),
        replace(problem(404, "operation_not_found"), signed_with=None),
        replace(stored("completed", http_status=200, response=RESULT), signed_with=OTHER_SECRET),
        stored("completed", http_status="200", response=RESULT),
        stored("finished"),
        problem(500, "internal_error"),
    ],
    ids=[
        "bare 404",
        "unsigned 404",
        "badly signed",
        "status not a number",
        "unknown status",
        "500",
    ],
)
def test_an_answer_outside_the_contract_is_invalid(
    fake: FakeBackend, client: BackendClient, reply: Reply
) -> None:
    answer = look(fake, client, reply)
    assert answer.status is LookupStatus.INVALID
    assert answer.outcome() is None


def test_a_lookup_answer_bound_to_another_request_is_invalid(
    fake: FakeBackend, client: BackendClient
) -> None:
    run(fake, client)
    reply = replace(stored("completed", http_status=200, response=RESULT), bound_to_first=True)
    answer = look(fake, client, reply)
    assert answer.status is LookupStatus.INVALID
    assert answer.error is not None
    assert "does not match this request" in answer.error


def test_a_lookup_is_signed_with_its_key_and_a_request_id(
    fake: FakeBackend, client: BackendClient
) -> None:
    client.lookup(ledger(fake), KEY)
    (seen,) = fake.seen
    assert seen.refused is None
    assert seen.headers["idempotency-key"] == KEY
    assert seen.headers["x-request-id"].startswith("req_")


def test_a_backend_that_cannot_be_reached(client: BackendClient) -> None:
    backend = Backend("ledger", closed_port_url(), frozenset({"payment.reverse"}), SECRET, 0.2, 0.2)
    assert client.lookup(backend, KEY).status is LookupStatus.UNREACHABLE


def test_a_lookup_that_times_out_or_gets_503_is_unreachable(
    fake: FakeBackend, client: BackendClient
) -> None:
    assert look(fake, client, Reply(stall=STALL_SECONDS)).status is LookupStatus.UNREACHABLE
    assert look(fake, client, problem(503, "maintenance")).status is LookupStatus.UNREACHABLE


def test_only_a_derived_key_is_looked_up(fake: FakeBackend, client: BackendClient) -> None:
    with pytest.raises(ValueError, match="derived"):
        client.lookup(ledger(fake), "../v1/actions/payment.reverse")
    assert fake.seen == []
