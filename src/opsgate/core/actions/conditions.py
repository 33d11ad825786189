"""Structured conditions for policy rules, e.g. `payload.amount_minor gt 10000`. No `eval`.

A condition names a field, an operator and a value. The field is one of:

- `payload.<name>`: a field of the action's payload;
- `target.<name>`: a field of the target's recorded state;
- `cumulative.<scope>.<measure>`: a figure the control layer computes in the action's
  transaction (core/actions/aggregates.py), so that a threshold cannot be avoided by splitting:
  `scope` is `target` (this target), `actor` (the requester) or `customer` (the customer the
  target belongs to); `measure` is `amount` (summed by magnitude) or `count`. Each counts
  this action's accepted requests in the rolling `window`, those still waiting for approval
  included, plus this request.

Fields are checked against the action's payload model and the target kind's declared fields
when the policy loads, so a typo stops start-up instead of silently never matching.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from opsgate.core.durations import parse_duration

FIELD_PATTERN = (
    r"^((payload|target)\.[a-z_][a-z0-9_]*|cumulative\.(target|actor|customer)\.(amount|count))$"
)
CUMULATIVE = "cumulative"


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    IN = "in"
    NOT_IN = "not_in"


_COMPARE: dict[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.IN: lambda actual, expected: actual in expected,
    Op.NOT_IN: lambda actual, expected: actual not in expected,
}
_SYMBOL = {
    Op.EQ: "=",
    Op.NE: "≠",
    Op.GT: ">",
    Op.GE: "≥",
    Op.LT: "<",
    Op.LE: "≤",
    Op.IN: "in",
    Op.NOT_IN: "not in",
}
# ISO 4217 minor-unit exponents that are not 2 (as the console's money formatting).
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3}

Scalar = bool | int | str


class Scope(StrEnum):
    """Whose requests a cumulative figure adds up."""

    TARGET = "target"
    ACTOR = "actor"
    CUSTOMER = "customer"


class Measure(StrEnum):
    AMOUNT = "amount"
    COUNT = "count"


@dataclass(frozen=True, order=True)
class Aggregate:
    """One cumulative figure: this action's counted requests in `scope` within `window`
    (a duration like 24h), plus this request."""

    scope: Scope
    measure: Measure
    window: str

    @property
    def key(self) -> str:
        return f"{self.scope}.{self.measure}@{self.window}"


@dataclass(frozen=True)
class Facts:
    """What conditions are judged on. `cumulative` maps `Aggregate.key` to its figure;
    `target_kind` and `currency` only make explanations read naturally."""

    payload: Mapping[str, Any]
    target: Mapping[str, Any]
    cumulative: Mapping[str, int] = field(default_factory=dict)
    target_kind: str = "target"

    @property
    def currency(self) -> str | None:
        currency = self.target.get("currency")
        return currency if isinstance(currency, str) else None


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(pattern=FIELD_PATTERN)
    op: Op
    value: Scalar | list[Scalar]
    # Compare the magnitude (e.g. a debit of -2,000.00 counts as 2,000.00).
    abs: bool = False
    # Only for `cumulative.*` fields: the rolling window the figure adds up.
    window: str | None = None

    @field_validator("window")
    @classmethod
    def _valid_window(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _window_only_where_it_means_something(self) -> Condition:
        if self.source == CUMULATIVE:
            if self.window is None:
                raise ValueError(f'{self.field} needs a window, e.g. window = "24h"')
            if self.abs:
                raise ValueError(f"{self.field} is already summed by magnitude; drop abs")
            if not isinstance(self.value, int) or isinstance(self.value, bool):
                raise ValueError(f"{self.field} compares with a whole number")
        elif self.window is not None:
            raise ValueError(f"window applies only to cumulative.* fields, not {self.field}")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_window(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        # Conditions without a window keep the canonical form (and so the policy version)
        # they had before windows existed.
        dumped = handler(self)
        if dumped.get("window") is None:
            dumped.pop("window", None)
        return dumped

    @property
    def source(self) -> str:
        return self.field.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.field.split(".", 1)[1]

    @property
    def aggregate(self) -> Aggregate | None:
        """The cumulative figure this condition needs, or None for payload/target fields."""
        if self.source != CUMULATIVE or self.window is None:
            return None
        scope, measure = self.name.split(".")
        return Aggregate(Scope(scope), Measure(measure), self.window)

    def actual(self, facts: Facts) -> Any:
        aggregate = self.aggregate
        if aggregate is not None:
            return facts.cumulative.get(aggregate.key)
        return (facts.payload if self.source == "payload" else facts.target).get(self.name)

    def holds(self, facts: Facts) -> bool:
        """Evaluate against `facts`.

        An absent (None) payload or target value holds only for `ne`/`not_in`; an absent
        cumulative figure (never computed) holds, as does a value that cannot be compared
        with the policy's (a type mismatch): a control fails closed.
        """
        actual = self.actual(facts)
        if actual is None:
            return self.source == CUMULATIVE or self.op in (Op.NE, Op.NOT_IN)
        try:
            if self.abs:
                actual = abs(actual)
            return bool(_COMPARE[self.op](actual, self.value))
        except TypeError:
            return True

    def describe(self) -> str:
        field = f"|{self.field}|" if self.abs else self.field
        window = f" in {self.window}" if self.window else ""
        return f"{field}{window} {self.op} {self.value!r}"

    def explain(self, facts: Facts) -> str:
        """Why this condition holds for `facts`, in a reviewer's words, e.g. `cumulative
        258.71 USD on this payment in 24h > 100.00 USD`."""
        aggregate = self.aggregate
        symbol = _SYMBOL[self.op]
        if aggregate is None:
            return f"{self.describe()} (is {self.actual(facts)!r})"
        actual = self.actual(facts)
        where = {
            Scope.TARGET: f"on this {facts.target_kind}",
            Scope.ACTOR: "by the requester",
            Scope.CUSTOMER: "for this customer",
        }[aggregate.scope]
        if aggregate.measure == Measure.COUNT:
            return f"{actual} requests {where} in {aggregate.window} {symbol} {self.value}"
        assert isinstance(self.value, int)
        amount, limit = _money(actual, facts.currency), _money(self.value, facts.currency)
        return f"cumulative {amount} {where} in {aggregate.window} {symbol} {limit}"


def _money(amount_minor: Any, currency: str | None) -> str:
    if not isinstance(amount_minor, int) or currency is None:
        return f"{amount_minor} minor units"
    places = _EXPONENTS.get(currency.upper(), 2)
    return f"{Decimal(amount_minor).scaleb(-places):,.{places}f} {currency}"


def all_hold(conditions: list[Condition], facts: Facts) -> bool:
    """True when every condition holds (an empty list always holds)."""
    return all(condition.holds(facts) for condition in conditions)
