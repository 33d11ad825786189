"""Identifiers and request IDs: shape, uniqueness, time order, and the request-ID rules."""

from __future__ import annotations

import re
import time
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsgate.core import ids
from opsgate.core.ids import looks_like_id, new_id
from opsgate.core.request_ids import client_request_id, is_well_formed, new_request_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_SHAPE = re.compile(r"(?P<prefix>[a-z]+)_(?P<body>[0-9A-HJKMNP-TV-Z]{26})")


def decode(body: str) -> int:
    value = 0
    for char in body:
        value = value * 32 + CROCKFORD.index(char)
    return value


@pytest.mark.parametrize("prefix", ["cus", "acc", "pay", "aud", "tok", "usr"])
def test_new_id_is_prefix_and_26_crockford_characters(prefix: str) -> None:
    value = new_id(prefix)
    match = ID_SHAPE.fullmatch(value)
    assert match is not None, value
    assert match["prefix"] == prefix
    assert not set(match["body"]) & set("ILOU")
    assert looks_like_id(value)


def test_the_time_part_is_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id("cus")
    after = time.time_ns() // 1_000_000
    assert before <= decode(value[4:14]) <= after


def test_new_ids_are_unique_over_many_calls() -> None:
    made = [new_id("cus") for _ in range(20_000)]
    assert len(set(made)) == len(made)
    # The 80 random bits differ even within one millisecond.
    assert len({m[14:] for m in made}) == len(made)


def test_ids_made_in_later_milliseconds_sort_later() -> None:
    made = []
    for _ in range(20):
        made.append(new_id("pay"))
        time.sleep(0.002)
    assert made == sorted(made)


class _FakeTime:
    def __init__(self, millis: int) -> None:
        self.millis = millis

    def time_ns(self) -> int:
        return self.millis * 1_000_000


MILLIS = st.integers(min_value=0, max_value=2**48 - 1)


@settings(max_examples=100)
@given(first=MILLIS, second=MILLIS)
def test_id_order_follows_time_order_across_the_whole_range(first: int, second: int) -> None:
    made = []
    for millis in (first, second):
        with patch.object(ids, "time", _FakeTime(millis)):
            made.append(new_id("cus"))
    assert [decode(m[4:14]) for m in made] == [first, second]
    if first != second:
        assert (made[0] < made[1]) == (first < second)


GOOD_BODY = "01J" + "0" * 23


@pytest.mark.parametrize(
    "value",
    [
        "",
        "cus_",
        "cus_" + GOOD_BODY[:-1],
        "cus_" + GOOD_BODY + "0",
        "cus_" + GOOD_BODY[:-1] + "I",
        "cus_" + GOOD_BODY[:-1] + "U",
        "cus_" + GOOD_BODY.lower(),
        "CUS_" + GOOD_BODY,
        "c_" + GOOD_BODY,
        "cus-" + GOOD_BODY,
        "cus" + GOOD_BODY,
    ],
)
def test_looks_like_id_refuses_other_shapes(value: str) -> None:
    assert looks_like_id("cus_" + GOOD_BODY)
    assert not looks_like_id(value)


# --- request IDs -----------------------------------------------------------------------------

REQUEST_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
WELL_FORMED = st.text(alphabet=REQUEST_ID_CHARS, min_size=1, max_size=128)


@settings(max_examples=200)
@given(value=WELL_FORMED)
def test_a_well_formed_client_request_id_is_kept_as_given(value: str) -> None:
    assert is_well_formed(value)
    assert client_request_id(value) == value


@settings(max_examples=200)
@given(
    prefix=st.text(alphabet=REQUEST_ID_CHARS, max_size=60),
    bad=st.characters().filter(lambda c: c not in REQUEST_ID_CHARS),
    suffix=st.text(alphabet=REQUEST_ID_CHARS, max_size=60),
)
def test_a_client_request_id_with_any_other_character_is_ignored(
    prefix: str, bad: str, suffix: str
) -> None:
    value = prefix + bad + suffix
    assert not is_well_formed(value)
    assert client_request_id(value) is None


@settings(max_examples=50)
@given(value=st.text(alphabet=REQUEST_ID_CHARS, min_size=129, max_size=300))
def test_a_client_request_id_longer_than_128_characters_is_ignored(value: str) -> None:
    assert not is_well_formed(value)
    assert client_request_id(value) is None


@pytest.mark.parametrize("value", [None, "", "abc\n", "abc def", "a/b", "ä", "x" * 129])
def test_missing_or_malformed_client_request_ids_are_ignored(value: str | None) -> None:
    assert not is_well_formed(value)
    assert client_request_id(value) is None


def test_exactly_128_characters_is_still_well_formed() -> None:
    assert is_well_formed("a" * 128)
    assert client_request_id("a" * 128) == "a" * 128


def test_fresh_request_ids_are_well_formed_and_distinct() -> None:
    made = {new_request_id() for _ in range(2_000)}
    assert len(made) == 2_000
    assert all(is_well_formed(m) and m.startswith("req_") and len(m) == 30 for m in made)
