"""Structured conditions for policy rules, e.g. `payload.amount_minor gt 10000`. No `eval`.

A condition names a field of the payload or of the target's recorded state, an operator and
a value. Fields are checked against the action's payload model and the target kind's declared
fields when the policy loads, so a typo stops start-up instead of silently never matching.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FIELD_PATTERN = r"^(payload|target)\.[a-z_][a-z0-9_]*$"


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

Scalar = bool | int | str


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(pattern=FIELD_PATTERN)
    op: Op
    value: Scalar | list[Scalar]
    # Compare the magnitude (e.g. a debit of -2,000.00 counts as 2,000.00).
    abs: bool = False

    @property
    def source(self) -> str:
        return self.field.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.field.split(".", 1)[1]

    def holds(self, facts: Mapping[str, Mapping[str, Any]]) -> bool:
        """Evaluate against `{"payload": {...}, "target": {...}}`.

        An absent (None) value holds only for `ne`/`not_in`. A value that cannot be compared
        with the policy's (a type mismatch) counts as holding: a control fails closed.
        """
        actual = facts.get(self.source, {}).get(self.name)
        if actual is None:
            return self.op in (Op.NE, Op.NOT_IN)
        try:
            if self.abs:
                actual = abs(actual)
            return bool(_COMPARE[self.op](actual, self.value))
        except TypeError:
            return True

    def describe(self) -> str:
        field = f"|{self.field}|" if self.abs else self.field
        return f"{field} {self.op} {self.value!r}"


def all_hold(conditions: list[Condition], facts: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when every condition holds (an empty list always holds)."""
    return all(condition.holds(facts) for condition in conditions)
