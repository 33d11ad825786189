"""HMAC signatures between opsgate and its backends (core/integrations/signing.py): v2 requests,
answers
bound to their request, and the v1 migration window."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from httpx import Headers

from opsgate.core.integrations.signing import (
    DEFAULT_TOLERANCE_SECONDS,
    NONCE_HEADER,
    REPLAYED_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    SignatureVersion,
    request_string,
    response_string,
    sign_request,
    sign_response,
    sign_v1,
    verify_request,
    verify_response,
)

CURRENT = "c" * 40
PREVIOUS = "p" * 40
STRANGER = "s" * 40
NOW = 1_764_424_800.0
BODY = b'{"action":"payment.reverse","payload":{"amount_minor":2500}}'
PATH = "/v1/actions/payment.reverse"
KEY = "og1_" + "a" * 64
REQUEST_ID = "req_0123456789abcdef012345"
NONCE = "0f" * 16
ANSWER = b'{"result":{"reversal_id":"rev_1"}}'


def signed(secret: str = CURRENT, **changes: object) -> Headers:
    """Headers signing the default request, then `changes` applied to them."""
    headers = Headers(
        sign_request(
            secret, "POST", PATH, BODY, idempotency_key=KEY, request_id=REQUEST_ID, now=NOW
        ).headers
    )
    for name, value in changes.items():
        headers[name.replace("_", "-")] = str(value)
    return headers


def refusal(headers: Headers, **overrides: object) -> str:
    arguments: dict[str, object] = {
        "secrets": [CURRENT],
        "method": "POST",
        "path": PATH,
        "body": BODY,
        "headers": headers,
        "now": NOW,
    } | overrides
    with pytest.raises(SignatureError) as caught:
        verify_request(**arguments)  # type: ignore[arg-type]
    return str(caught.value)


def mac_of(headers: Headers) -> str:
    return headers[SIGNATURE_HEADER].removeprefix("v2=")


# --- requests ------------------------------------------------------------------------------


def test_a_signed_request_verifies_and_names_what_its_answer_is_bound_to() -> None:
    headers = signed()
    verified = verify_request([CURRENT], "POST", PATH, BODY, headers, now=NOW)
    assert verified.version is SignatureVersion.V2
    assert verified.signature == mac_of(headers)
    assert verified.timestamp == int(NOW)
    assert CURRENT not in repr(verified)


def test_the_request_string_is_the_documented_one() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    expected = (
        f"opsgate-v2\nrequest\n{int(NOW)}\n{NONCE}\nPOST\n{PATH}\n{KEY}\n{REQUEST_ID}\n{digest}"
    )
    assert request_string(str(int(NOW)), NONCE, "post", PATH, KEY, REQUEST_ID, BODY) == expected
    headers = sign_request(
        CURRENT,
        "POST",
        PATH,
        BODY,
        idempotency_key=KEY,
        request_id=REQUEST_ID,
        now=NOW,
        nonce=NONCE,
    ).headers
    assert (
        headers[SIGNATURE_HEADER]
        == "v2=" + hmac.new(CURRENT.encode(), expected.encode(), hashlib.sha256).hexdigest()
    )


def test_the_headers_carry_the_signed_key_request_id_nonce_and_whole_seconds() -> None:
    signed_request = sign_request(
        CURRENT, "POST", PATH, BODY, idempotency_key=KEY, request_id=REQUEST_ID, now=NOW + 0.9
    )
    headers = signed_request.headers
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert (headers["Idempotency-Key"], headers["X-Request-ID"]) == (KEY, REQUEST_ID)
    assert len(headers[NONCE_HEADER]) == 32
    assert headers[SIGNATURE_HEADER] == f"v2={signed_request.signature}"


def test_every_signing_has_a_new_nonce_and_so_a_new_signature() -> None:
    first, second = signed(), signed()
    assert first[NONCE_HEADER] != second[NONCE_HEADER]
    assert mac_of(first) != mac_of(second)


def test_during_a_rotation_both_secrets_are_accepted_and_the_one_used_is_named() -> None:
    old = verify_request([CURRENT, PREVIOUS], "POST", PATH, BODY, signed(PREVIOUS), now=NOW)
    new = verify_request([CURRENT, PREVIOUS], "POST", PATH, BODY, signed(CURRENT), now=NOW)
    assert (old.secret, new.secret) == (PREVIOUS, CURRENT)


def test_a_third_secret_is_refused() -> None:
    assert refusal(signed(STRANGER), secrets=[CURRENT, PREVIOUS]) == "the signature does not match"


@pytest.mark.parametrize(
    "tampered",
    [
        {"method": "PUT"},
        {"path": "/v1/actions/account.block"},
        {"path": PATH + "?amount_minor=1"},
        {"body": BODY.replace(b"2500", b"9500")},
        {"body": BODY + b" "},
    ],
    ids=["method", "path", "query", "body", "one more byte"],
)
def test_a_tampered_request_is_refused(tampered: dict[str, object]) -> None:
    assert refusal(signed(), **tampered) == "the signature does not match"


@pytest.mark.parametrize(
    "header",
    [
        {"Idempotency_Key": "og1_" + "b" * 64},
        {"X_Request_ID": "req_someone_else"},
        {TIMESTAMP_HEADER: str(int(NOW) + 1)},
        {NONCE_HEADER: "1e" * 16},
    ],
    ids=["idempotency key", "request ID", "timestamp", "nonce"],
)
def test_a_captured_request_with_a_changed_header_is_refused(header: dict[str, str]) -> None:
    assert refusal(signed(**header)) == "the signature does not match"


def test_a_dropped_idempotency_key_is_refused() -> None:
    headers = signed()
    del headers["Idempotency-Key"]
    assert refusal(headers) == "the signature does not match"


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS + 1, -DEFAULT_TOLERANCE_SECONDS - 1])
def test_a_timestamp_outside_the_window_is_refused(offset: int) -> None:
    reason = refusal(signed(), now=NOW + offset)
    assert reason == "the signature timestamp is outside the accepted window"


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS, -DEFAULT_TOLERANCE_SECONDS])
def test_a_timestamp_at_the_edge_of_the_window_is_accepted(offset: int) -> None:
    verify_request([CURRENT], "POST", PATH, BODY, signed(), now=NOW + offset)


def test_a_narrower_window_is_enforced() -> None:
    reason = refusal(signed(), now=NOW + 11, tolerance=10)
    assert reason == "the signature timestamp is outside the accepted window"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (Headers({}), "the request is not signed"),
        (Headers({TIMESTAMP_HEADER: str(int(NOW))}), "the request is not signed"),
        (Headers({SIGNATURE_HEADER: "v2=" + "0" * 64}), "the request is not signed"),
        (
            Headers({TIMESTAMP_HEADER: "-1764424800", SIGNATURE_HEADER: "v2=00"}),
            "the signature timestamp is malformed",
        ),
        (
            Headers({TIMESTAMP_HEADER: "1e9", SIGNATURE_HEADER: "v2=00"}),
            "the signature timestamp is malformed",
        ),
        (
            Headers({TIMESTAMP_HEADER: "1" * 13, SIGNATURE_HEADER: "v2=00"}),
            "the signature timestamp is malformed",
        ),
        (
            Headers({TIMESTAMP_HEADER: str(int(NOW)), SIGNATURE_HEADER: "v3=" + "0" * 64}),
            "no v2 signature was offered",
        ),
        (
            Headers({TIMESTAMP_HEADER: str(int(NOW)), SIGNATURE_HEADER: "0" * 64}),
            "no v2 signature was offered",
        ),
        (
            Headers({TIMESTAMP_HEADER: str(int(NOW)), SIGNATURE_HEADER: "v2=" + "0" * 64}),
            "the signature nonce is missing or malformed",
        ),
        (
            Headers(
                {
                    TIMESTAMP_HEADER: str(int(NOW)),
                    SIGNATURE_HEADER: "v2=" + "0" * 64,
                    NONCE_HEADER: "short",
                }
            ),
            "the signature nonce is missing or malformed",
        ),
    ],
    ids=[
        "no headers",
        "no signature",
        "no timestamp",
        "negative timestamp",
        "float timestamp",
        "long timestamp",
        "unknown version",
        "no version",
        "no nonce",
        "short nonce",
    ],
)
def test_malformed_signature_headers_are_refused(headers: Headers, reason: str) -> None:
    assert refusal(headers) == reason


def test_one_good_signature_among_several_offered_is_enough() -> None:
    headers = signed()
    headers[SIGNATURE_HEADER] = f"v2={'0' * 64}, {headers[SIGNATURE_HEADER]}"
    verify_request([CURRENT], "POST", PATH, BODY, headers, now=NOW)


def test_header_names_are_matched_whatever_their_case() -> None:
    lowered = Headers({name.lower(): value for name, value in signed().items()})
    verify_request([CURRENT], "POST", PATH, BODY, lowered, now=NOW)


def test_a_line_break_in_a_signed_field_is_refused_not_signed() -> None:
    with pytest.raises(SignatureError, match="line break"):
        sign_request(
            CURRENT, "POST", PATH, BODY, idempotency_key="k\nPOST", request_id="r", now=NOW
        )


def test_a_refusal_never_reveals_a_secret() -> None:
    reason = refusal(signed(STRANGER), secrets=[CURRENT, PREVIOUS])
    assert all(secret not in reason for secret in (CURRENT, PREVIOUS, STRANGER))


# --- the v1 migration window ----------------------------------------------------------------


def v1_signed() -> Headers:
    return Headers(sign_v1(CURRENT, "POST", PATH, BODY, now=NOW))


def test_a_v1_request_is_refused_by_default() -> None:
    assert refusal(v1_signed()) == "v1 signatures are no longer accepted; sign with v2"


def test_a_v1_request_is_accepted_only_when_the_window_is_open() -> None:
    verified = verify_request([CURRENT], "POST", PATH, BODY, v1_signed(), now=NOW, accept_v1=True)
    assert verified.version is SignatureVersion.V1
    assert refusal(v1_signed(), body=BODY + b" ", accept_v1=True) == "the signature does not match"


def test_a_v2_signature_wins_over_a_v1_one_offered_beside_it() -> None:
    both = signed()
    both[SIGNATURE_HEADER] = f"{v1_signed()[SIGNATURE_HEADER]}, v2={'0' * 64}"
    assert refusal(both, accept_v1=True) == "the signature does not match"


# --- answers -------------------------------------------------------------------------------


def answer_to(request: Headers, status: int = 200, body: bytes = ANSWER, **kw: bool) -> Headers:
    return Headers(sign_response(CURRENT, mac_of(request), status, body, NOW, **kw))


def answer_refusal(request: Headers, status: int, body: bytes, answer: Headers) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_response(CURRENT, mac_of(request), status, body, answer, now=NOW)
    return str(caught.value)


def test_an_answer_verifies_against_the_request_it_answers() -> None:
    request = signed()
    verify_response(CURRENT, mac_of(request), 200, ANSWER, answer_to(request), now=NOW)


def test_the_response_string_is_the_documented_one() -> None:
    digest = hashlib.sha256(ANSWER).hexdigest()
    bound = "ab" * 32
    assert response_string(str(int(NOW)), bound, 200, "true", ANSWER) == (
        f"opsgate-v2\nresponse\n{int(NOW)}\n{bound}\n200\ntrue\n{digest}"
    )


def test_a_reflected_request_is_not_an_answer() -> None:
    request = signed()
    reason = answer_refusal(request, 200, BODY, request)
    assert reason == "the signature does not match this request"


def test_an_answer_to_another_request_is_refused() -> None:
    first, second = signed(), signed()
    assert answer_refusal(second, 200, ANSWER, answer_to(first)) == (
        "the signature does not match this request"
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, ANSWER), (200, ANSWER + b" "), (409, ANSWER)],
    ids=["status", "body", "a refusal's status"],
)
def test_a_tampered_answer_is_refused(status: int, body: bytes) -> None:
    request = signed()
    reason = answer_refusal(request, status, body, answer_to(request))
    assert reason == "the signature does not match this request"


def test_the_replayed_marker_is_signed() -> None:
    request = signed()
    replayed = answer_to(request, replayed=True)
    replayed[REPLAYED_HEADER] = "true"
    verify_response(CURRENT, mac_of(request), 200, ANSWER, replayed, now=NOW)
    del replayed[REPLAYED_HEADER]
    assert answer_refusal(request, 200, ANSWER, replayed) == (
        "the signature does not match this request"
    )
    added = answer_to(request)
    added[REPLAYED_HEADER] = "true"
    assert answer_refusal(request, 200, ANSWER, added) == (
        "the signature does not match this request"
    )


def test_an_answer_signed_v1_is_never_believed() -> None:
    request = signed()
    legacy = Headers(sign_v1(CURRENT, "POST", PATH, ANSWER, now=NOW))
    assert answer_refusal(request, 200, ANSWER, legacy) == "no v2 signature was offered"


def test_an_unsigned_or_stale_answer_is_refused() -> None:
    request = signed()
    assert answer_refusal(request, 200, ANSWER, Headers({})) == "the answer is not signed"
    with pytest.raises(SignatureError, match="outside the accepted window"):
        verify_response(CURRENT, mac_of(request), 200, ANSWER, answer_to(request), now=NOW + 301)


def test_the_worked_example_of_docs_backends_md_holds() -> None:
    secret = "example-secret-0123456789abcdef0123"
    body = (
        b'{"action":"payment.reverse","actor":{"id":"usr_01","name":"olga","roles":["ops_lead"]}'
        b',"approval_id":null,"execution_request_id":null,"payload":{"amount_minor":2500,'
        b'"reason_code":"customer_dispute"},"reason":"Customer disputed the charge",'
        b'"request_id":"req_5f1c2a9e0b7d4c3a8e6f10","target":"payment:pay_01"}'
    )
    assert len(body) == 307
    request = sign_request(
        secret,
        "POST",
        PATH,
        body,
        idempotency_key="og1_2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        request_id="req_5f1c2a9e0b7d4c3a8e6f10",
        now=1764424800,
        nonce="9c1e4b7a2d5f8e0c3b6a9d2f5e8c1b4a",
    )
    assert request.signature == "24c03a7428e269a4870bc230af77592a93dc18d114f52c2924aebb20364ee593"
    answer = (
        b'{"after":{"reversed_minor":2500},"before":{"reversed_minor":0},'
        b'"result":{"reversal_id":"rev_01"},"state":{}}'
    )
    assert sign_response(secret, request.signature, 200, answer, 1764424801) == {
        TIMESTAMP_HEADER: "1764424801",
        SIGNATURE_HEADER: "v2=717cdf202079acb4f016a8f0152d1f4f9bae0dc66bc161f74831b0c4c92df90e",
    }
