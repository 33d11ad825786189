"""HMAC request signing between opsgate and its backends (core/signing.py)."""

from __future__ import annotations

import pytest
from httpx import Headers

from opsgate.core.signing import (
    DEFAULT_TOLERANCE_SECONDS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    verify,
)

CURRENT = "c" * 40
PREVIOUS = "p" * 40
STRANGER = "s" * 40
NOW = 1_764_424_800.0
BODY = b'{"action":"payment.reverse","payload":{"amount_minor":2500}}'
PATH = "/v1/actions/payment.reverse"


def signed(secret: str = CURRENT, **changes: object) -> Headers:
    """Headers signing the default request, then `changes` applied to them."""
    headers = Headers(sign(secret, "POST", PATH, BODY, now=NOW))
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
        verify(**arguments)  # type: ignore[arg-type]
    return str(caught.value)


def test_a_signed_request_verifies() -> None:
    verify([CURRENT], "POST", PATH, BODY, signed(), now=NOW)


def test_the_signature_names_its_version_and_the_whole_seconds() -> None:
    headers = sign(CURRENT, "POST", PATH, BODY, now=NOW + 0.9)
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert len(headers[SIGNATURE_HEADER]) == len("v1=") + 64


def test_the_method_is_compared_in_upper_case() -> None:
    verify([CURRENT], "post", PATH, BODY, signed(), now=NOW)


def test_during_a_rotation_both_secrets_are_accepted() -> None:
    verify([CURRENT, PREVIOUS], "POST", PATH, BODY, signed(PREVIOUS), now=NOW)
    verify([CURRENT, PREVIOUS], "POST", PATH, BODY, signed(CURRENT), now=NOW)


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


def test_a_changed_timestamp_is_refused() -> None:
    headers = signed(**{TIMESTAMP_HEADER: str(int(NOW) + 1)})
    assert refusal(headers) == "the signature does not match"


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS + 1, -DEFAULT_TOLERANCE_SECONDS - 1])
def test_a_timestamp_outside_the_window_is_refused(offset: int) -> None:
    reason = refusal(signed(), now=NOW + offset)
    assert reason == "the signature timestamp is outside the accepted window"


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS, -DEFAULT_TOLERANCE_SECONDS])
def test_a_timestamp_at_the_edge_of_the_window_is_accepted(offset: int) -> None:
    verify([CURRENT], "POST", PATH, BODY, signed(), now=NOW + offset)


def test_a_narrower_window_is_enforced() -> None:
    reason = refusal(signed(), now=NOW + 11, tolerance=10)
    assert reason == "the signature timestamp is outside the accepted window"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (Headers({}), "the request is not signed"),
        (Headers({TIMESTAMP_HEADER: str(int(NOW))}), "the request is not signed"),
        (Headers({SIGNATURE_HEADER: "v1=" + "0" * 64}), "the request is not signed"),
        (
            Headers({TIMESTAMP_HEADER: "-1764424800", SIGNATURE_HEADER: "v1=00"}),
            "the signature timestamp is malformed",
        ),
        (
            Headers({TIMESTAMP_HEADER: "1e9", SIGNATURE_HEADER: "v1=00"}),
            "the signature timestamp is malformed",
        ),
        (
            Headers({TIMESTAMP_HEADER: "1" * 13, SIGNATURE_HEADER: "v1=00"}),
            "the signature timestamp is malformed",
        ),
        (
            Headers({TIMESTAMP_HEADER: str(int(NOW)), SIGNATURE_HEADER: "v2=" + "0" * 64}),
            "no v1 signature was offered",
        ),
        (
            Headers({TIMESTAMP_HEADER: str(int(NOW)), SIGNATURE_HEADER: "0" * 64}),
            "no v1 signature was offered",
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
    ],
)
def test_malformed_signature_headers_are_refused(headers: Headers, reason: str) -> None:
    assert refusal(headers) == reason


def test_one_good_signature_among_several_offered_is_enough() -> None:
    good = signed()[SIGNATURE_HEADER]
    headers = signed(**{SIGNATURE_HEADER: f"v1={'0' * 64}, {good}"})
    verify([CURRENT], "POST", PATH, BODY, headers, now=NOW)


def test_header_names_are_matched_whatever_their_case() -> None:
    lowered = Headers({name.lower(): value for name, value in signed().items()})
    verify([CURRENT], "POST", PATH, BODY, lowered, now=NOW)


def test_a_refusal_never_reveals_a_secret() -> None:
    reason = refusal(signed(STRANGER), secrets=[CURRENT, PREVIOUS])
    assert all(secret not in reason for secret in (CURRENT, PREVIOUS, STRANGER))
