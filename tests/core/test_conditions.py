"""Structured conditions: payload, target and cumulative fields, judged without eval."""

from __future__ import annotations

from opsgate.core.actions.conditions import Aggregate, Condition, Facts, Measure, Op, Scope


def cumulative(field: str, value: int, window: str = "24h") -> Condition:
    return Condition(field=field, op=Op.GT, value=value, window=window)


def test_a_cumulative_condition_reads_its_figure_by_scope_measure_and_window() -> None:
    condition = cumulative("cumulative.actor.count", 2, "1h")
    assert condition.aggregate == Aggregate(Scope.ACTOR, Measure.COUNT, "1h")
    facts = Facts(payload={}, target={}, cumulative={"actor.count@1h": 3, "actor.count@24h": 1})
    assert condition.holds(facts)


def test_a_cumulative_figure_that_was_never_computed_holds() -> None:
    # Fail closed: a figure the gateway did not compute must not let a request through.
    assert cumulative("cumulative.target.amount", 10_000).holds(Facts(payload={}, target={}))


def test_a_missing_payload_value_holds_only_for_ne() -> None:
    facts = Facts(payload={}, target={})
    assert not Condition(field="payload.amount_minor", op=Op.GT, value=1).holds(facts)
    assert Condition(field="payload.amount_minor", op=Op.NE, value=1).holds(facts)


def test_an_amount_is_explained_in_the_targets_currency() -> None:
    facts = Facts(
        payload={},
        target={"currency": "JPY"},
        cumulative={"customer.amount@24h": 123_456},
        target_kind="payment",
    )
    explained = cumulative("cumulative.customer.amount", 100_000).explain(facts)
    assert explained == "cumulative 123,456 JPY for this customer in 24h > 100,000 JPY"


def test_a_count_is_explained_as_requests() -> None:
    facts = Facts(payload={}, target={}, cumulative={"actor.count@1h": 3})
    explained = cumulative("cumulative.actor.count", 2, "1h").explain(facts)
    assert explained == "3 requests by the requester in 1h > 2"


def test_a_payload_condition_is_explained_with_its_value() -> None:
    facts = Facts(payload={"amount_minor": 20_000}, target={})
    explained = Condition(field="payload.amount_minor", op=Op.GT, value=10_000).explain(facts)
    assert explained == "payload.amount_minor gt 10000 (is 20000)"
