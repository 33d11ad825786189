"""Keeping secrets and sensitive data out of the audit trail: the masking rules on their own
(no database), then end to end through the gateway on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field
from sqlalchemy import select

from opsgate.core.actions.gateway import Gateway
from opsgate.core.actions.policy import parse_policy
from opsgate.core.actions.registry import (
    ActionContext,
    ActionSpec,
    Outcome,
    Payload,
    Registry,
    RiskClass,
)
from opsgate.core.audit.redaction import (
    MASK,
    is_secret_key,
    luhn_valid,
    mask_text,
    redact,
    sensitive_fields,
)
from opsgate.core.audit.search import as_dict
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import DomainError, DomainRejected
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.web.services import Services
from opsgate_demo.models import Customer
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World
from tests.registries import build_registry

FAST = settings(max_examples=60, deadline=None)

# --- card numbers ------------------------------------------------------------------------------


def luhn_check_digit(body: str) -> str:
    """The digit that makes `body + digit` pass the Luhn check."""
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return digit
    raise AssertionError("unreachable")


@st.composite
def card_digits(draw: st.DrawFn, lengths: tuple[int, int] = (13, 19), valid: bool = True) -> str:
    length = draw(st.integers(*lengths))
    # Card numbers never start with 0 (no scheme issues them), which the masker relies on.
    first = draw(st.sampled_from("123456789"))
    body = first + draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    check = luhn_check_digit(body)
    if not valid:
        check = str((int(check) + draw(st.integers(1, 9))) % 10)
    return body + check


def grouped(digits: str, separator: str, size: int = 4) -> str:
    return separator.join(digits[i : i + size] for i in range(0, len(digits), size))


SEPARATORS = st.sampled_from(["", " ", "-"])


def test_luhn_reference_numbers() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@FAST
@given(card_digits(), SEPARATORS, st.sampled_from(["", "paid with ", "(", "card: "]))
def test_luhn_valid_card_numbers_keep_only_their_last_four(
    digits: str, separator: str, prefix: str
) -> None:
    text = f"{prefix}{grouped(digits, separator)} today."
    masked = mask_text(text)
    assert masked == f"{prefix}[card ending {digits[-4:]}] today."


@FAST
@given(card_digits(), st.lists(st.sampled_from([" ", "-", ""]), min_size=18, max_size=18))
def test_any_single_space_or_dash_between_digits_still_masks(
    digits: str, separators: list[str]
) -> None:
    text = digits[0] + "".join(s + d for s, d in zip(separators, digits[1:], strict=False))
    assert mask_text(f"pan {text}.") == f"pan [card ending {digits[-4:]}]."


@FAST
@given(card_digits(valid=False))
def test_luhn_invalid_numbers_are_kept(digits: str) -> None:
    # Written as one run: with separators, a run of whole groups inside it may itself be a
    # valid number, which is masked on purpose (a card followed by an expiry or a CVV).
    assert not luhn_valid(digits)
    text = f"order {digits} shipped"
    assert mask_text(text) == text


@FAST
@given(card_digits(lengths=(2, 12)), SEPARATORS)
def test_numbers_shorter_than_a_card_are_kept_even_if_luhn_valid(
    digits: str, separator: str
) -> None:
    text = f"ticket {grouped(digits, separator)} closed"
    assert mask_text(text) == text


@FAST
@given(card_digits(lengths=(20, 30)))
def test_digit_runs_longer_than_a_card_are_kept(digits: str) -> None:
    assert mask_text(f"ref {digits}") == f"ref {digits}"


@FAST
@given(card_digits(), st.sampled_from(["ref", "A", "x9"]), st.sampled_from(["", "b", "Z"]))
def test_numbers_inside_identifiers_are_kept(digits: str, before: str, after: str) -> None:
    for text in (f"{before}{digits}{after}", f"{digits}{after or 'z'}"):
        assert mask_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1111 12/27",
        "card 4111-1111-1111-1111 123",
        "5500 0000 0000 0004 7",
    ],
)
def test_a_card_number_followed_by_more_digits_is_still_masked(text: str) -> None:
    masked = mask_text(text)
    assert "[card ending" in masked
    assert not any(pan in masked.replace(" ", "").replace("-", "") for pan in PANS)


PANS = ("4111111111111111", "5500000000000004")


# --- national IDs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssn 123-45-6789 on file", "ssn [national id] on file"),
        ("NI AB 12 34 56 C ok", "NI [national id] ok"),
        ("ni ab123456c", "ni [national id]"),
        ("nino: CE 99 88 77 D.", "nino: [national id]."),
    ],
)
def test_us_ssn_and_uk_nino_shapes_are_masked(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "zip 123456789",  # an SSN's digits, not its shape
        "code 123-45-67890",
        "ref x123-45-6789",
        "QQ 12 34 56 C",  # Q never starts a NINO
        "AB 12 34 56 E",  # nor does E end one
        "invoice AB123456CD",
    ],
)
def test_other_shapes_are_kept(text: str) -> None:
    assert mask_text(text) == text


@FAST
@given(st.text(max_size=80))
def test_masking_is_idempotent(text: str) -> None:
    once = mask_text(text)
    assert mask_text(once) == once


# --- keys and payload models -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "db_passwd",
        "client_secret",
        "access_token",
        "refresh_token",
        "api_key",
        "apiKey",
        "Authorization",
        "cookie",
        "private_key",
        "otp",
    ],
)
def test_secret_named_keys_are_masked(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: "hunter2", "note": "ok"}) == {key: MASK, "note": "ok"}


@pytest.mark.parametrize("key", ["X-Api-Key", "api-key", "private-key"])
def test_header_style_secret_keys_are_masked(key: str) -> None:
    assert redact({key: "hunter2"}) == {key: MASK}


@pytest.mark.parametrize("key", ["token_id", "api_key_id", "secret_ids", "password_reset_id"])
def test_identifiers_of_secrets_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: "tok_01"}) == {key: "tok_01"}


def test_a_secret_key_with_no_value_stays_none() -> None:
    assert redact({"password": None}) == {"password": None}


class CardChange(Payload):
    pan: str = Field(json_schema_extra={"sensitive": True})
    pin: Annotated[str, Field(min_length=4, json_schema_extra={"sensitive": True})]
    memo: str = Field(default="", json_schema_extra={"sensitive": False})
    amount_minor: int = 0


def test_sensitive_fields_of_a_payload_model_are_masked() -> None:
    assert sensitive_fields(CardChange) == {"pan", "pin"}
    payload = CardChange(pan="x-ref-1", pin="9876", memo="see 4111 1111 1111 1111", amount_minor=5)
    assert redact(payload.model_dump(mode="json"), sensitive_fields(CardChange)) == {
        "pan": MASK,
        "pin": MASK,
        "memo": "see [card ending 1111]",
        "amount_minor": 5,
    }


def test_nested_dicts_and_lists_are_redacted_without_touching_the_input() -> None:
    value: dict[str, Any] = {
        "items": [
            {"password": "p", "note": "card 4111-1111-1111-1111"},
            "ssn 123-45-6789",
            ("4012888888881881", 7),
        ],
        "inner": {"pin": "1234", "deeper": {"session_token": "t", "token_id": "tok_1"}},
        "count": 3,
        "flag": True,
        "nothing": None,
    }
    original = json.loads(json.dumps(value))
    assert redact(value, {"pin"}) == {
        "items": [
            {"password": MASK, "note": "card [card ending 1111]"},
            "ssn [national id]",
            ["[card ending 1881]", 7],
        ],
        "inner": {"pin": MASK, "deeper": {"session_token": MASK, "token_id": "tok_1"}},
        "count": 3,
        "flag": True,
        "nothing": None,
    }
    assert json.loads(json.dumps(value)) == original


# --- end to end through the gateway (SQLite and PostgreSQL) ------------------------------------

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}
CLERK = Actor(id="usr_clerk", name="Clerk", roles=frozenset({"clerk"}))
POLICY_ROLES = """
[roles.clerk]
description = "may do everything"
[capabilities."audit.read"]
allow = []
[capabilities."metrics.read"]
allow = []
[capabilities."records.search"]
allow = []
"""
RAW = ("4111111111111111", "5500000000000004", "4012888888881881", "123-45-6789", "7531")


def policy_text(registry: Registry) -> str:
    entries = "".join(f'[actions."{name}"]\nallow = ["clerk"]\n' for name in registry.names())
    return POLICY_ROLES + entries


def update_card(ctx: ActionContext, customer: Customer, payload: CardChange) -> Outcome:
    if payload.memo.startswith("refuse"):
        raise DomainError("card_refused", f"The issuer refused: {payload.memo}.")
    return Outcome({"customer_id": customer.id, "memo": payload.memo})


@pytest.fixture
def card_gateway(db: Database, clock: FrozenClock) -> Gateway:
    registry = build_registry()
    registry.add(
        ActionSpec(
            "test.update_card", "Card", "test", RiskClass.WRITE, "customer", CardChange, update_card
        )
    )
    return Gateway(db, registry, parse_policy(policy_text(registry), registry), clock)


def audit_rows(db: Database, request_id: str) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.request_id == request_id)
                .order_by(AuditRecord.seq)
            )
        )


def everything(db: Database) -> str:
    """Every column of every audit record, as one text."""
    with db.reading() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.seq))
        return json.dumps([as_dict(row) for row in rows])


def test_card_numbers_in_reason_and_payload_are_stored_masked(
    card_gateway: Gateway, db: Database, world: World
) -> None:
    result = card_gateway.submit(
        CLERK,
        "test.update_card",
        {
            "target": f"customer:{world.customer()}",
            "payload": {
                "pan": "5500 0000 0000 0004",
                "pin": "7531",
                "memo": "old card 4012-8888-8888-1881, ssn 123-45-6789",
            },
            "reason": "customer read 4111 1111 1111 1111 over the phone",
        },
        Origin("card-1"),
    )
    assert result.status == "succeeded"
    [row] = audit_rows(db, "card-1")
    assert row.reason == "customer read [card ending 1111] over the phone"
    assert row.parameters == {
        "pan": MASK,
        "pin": MASK,
        "memo": "old card [card ending 1881], ssn [national id]",
        "amount_minor": 0,
    }
    assert row.outcome == {
        "customer_id": world.customer(),
        "memo": "old card [card ending 1881], ssn [national id]",
    }
    dump = everything(db).replace(" ", "").replace("-", "")
    for raw in RAW:
        assert raw.replace("-", "") not in dump, raw


def test_a_refusal_masks_reason_parameters_and_error_message(
    card_gateway: Gateway, db: Database, world: World
) -> None:
    with pytest.raises(DomainRejected):
        card_gateway.submit(
            CLERK,
            "test.update_card",
            {
                "target": f"customer:{world.customer()}",
                "payload": {
                    "pan": "4012888888881881",
                    "pin": "7531",
                    "memo": "refuse 4012888888881881",
                },
                "reason": "typed 4111-1111-1111-1111 by mistake",
            },
            Origin("card-refused"),
        )
    [row] = audit_rows(db, "card-refused")
    assert (row.result, row.error_code) == ("failed", "domain_rejected:card_refused")
    assert row.reason == "typed [card ending 1111] by mistake"
    assert row.parameters == {
        "pan": MASK,
        "pin": MASK,
        "memo": "refuse [card ending 1881]",
        "amount_minor": 0,
    }
    assert row.error_message == "The issuer refused: refuse [card ending 1881]."
    dump = everything(db).replace("-", "")
    for raw in RAW:
        assert raw.replace("-", "") not in dump, raw


def test_revealing_pii_is_audited_by_field_name_never_by_value(
    services: Services,
    db: Database,
    world: World,
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    alice = Actor(id=world.user_ids["alice"], name="alice", roles=ROLES["alice"])
    result = services.gateway.submit(
        alice,
        "customer.view_pii",
        {"target": f"customer:{world.customer(4)}", "payload": {}, "reason": "caller ID check"},
        Origin("pii-1"),
    )
    with db.reading() as session:
        customer = session.get(Customer, world.customer(4))
        assert customer is not None
        values = [customer.name, customer.email, customer.phone]
    assert result.result == {"name": values[0], "email": values[1], "phone": values[2]}
    [row] = audit_rows(db, "pii-1")
    assert (row.action, row.result) == ("customer.view_pii", "succeeded")
    assert row.outcome == {"revealed_fields": ["email", "name", "phone"]}
    stored = json.dumps(as_dict(row))
    logged = json.dumps(logs())
    assert row.id in logged  # the action was logged
    for value in values:
        assert value and value not in stored, value
        assert value not in logged, value


def test_no_token_secret_reaches_the_audit_trail_or_the_logs(
    client: TestClient, db: Database, world: World, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    bogus = "ogt_" + "Q" * 43
    calls = [
        client.post(
            "/api/v1/actions/customer.add_note",
            headers=world.auth("alice"),
            json={
                "target": f"customer:{world.customer()}",
                "payload": {"text": "t"},
                "reason": "r",
            },
        ),
        client.post(
            "/api/v1/actions/account.block",
            headers=world.auth("audrey"),
            json={"target": f"account:{world.account()}", "payload": {}, "reason": "r"},
        ),
        client.get("/api/v1/audit", headers=world.auth("audrey")),
        client.get("/api/v1/audit/verify", headers=world.auth("olga")),
        client.get("/api/v1/audit", headers={"Authorization": f"Bearer {bogus}"}),
        client.get("/api/v1/audit", headers={"Authorization": bogus}),
    ]
    assert [c.status_code for c in calls] == [200, 403, 200, 200, 401, 401]
    stored = everything(db)
    logged = json.dumps(logs())
    assert "auth.token" in stored and "http_request" in logged  # not vacuous
    for secret in [*world.tokens.values(), bogus]:
        assert secret not in stored
        assert secret not in logged
