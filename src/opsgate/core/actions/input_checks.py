"""Input no part of opsgate can store or survive: JSON nested too deep, NUL characters and
lone surrogates.

PostgreSQL text cannot hold NUL, and no database encodes a lone surrogate as UTF-8, so such a
value fails at the first write: the request would answer 500 and its refusal could not even be
audited. Deep JSON exhausts the parser's recursion. The checks run wherever input enters (the
gateway's envelope, the web layer's bodies and query parameters), so each is refused as an
ordinary, audited 4xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

# Deeper than any opsgate payload needs (envelopes are three levels), far below recursion limits.
MAX_JSON_DEPTH = 32
_UNSAFE = re.compile("[\x00\ud800-\udfff]")

Location = tuple[str | int, ...]


class UnsafeInput(ValueError):
    """Input refused before it reaches anything that stores or parses it further. `errors` are
    problem-style entries (`loc`, `msg`, `type`) that never repeat the offending value."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"])
        self.errors = errors


def unsafe_character(text: str) -> str | None:
    """`nul_character` or `lone_surrogate` when `text` holds one, else None."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    return "nul_character" if found.group() == "\x00" else "lone_surrogate"


def problem(loc: list[str | int], kind: str) -> dict[str, Any]:
    """One `errors` entry: where, what kind (`nul_character`, `lone_surrogate`,
    `json_too_deep`) and a message that does not repeat the value."""
    return {"loc": loc, "msg": _message(kind), "type": kind}


def _message(kind: str) -> str:
    if kind == "nul_character":
        return "Must not contain a NUL character."
    if kind == "lone_surrogate":
        return "Must not contain a lone UTF-16 surrogate."
    return f"Nested deeper than {MAX_JSON_DEPTH} levels."


def _problems(value: Any, loc: Location, depth: int) -> Iterator[dict[str, Any]]:
    # The recursion stops at MAX_JSON_DEPTH + 1 levels, far below Python's limit.
    if depth > MAX_JSON_DEPTH:
        yield problem(list(loc), "json_too_deep")
        return
    if isinstance(value, str):
        kind = unsafe_character(value)
        if kind:
            yield problem(list(loc), kind)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            kind = unsafe_character(key) if isinstance(key, str) else None
            if kind:  # the key itself is the problem: do not name it
                yield problem(list(loc), kind)
            else:
                yield from _problems(item, (*loc, key), depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _problems(item, (*loc, index), depth + 1)


def check_value(value: Any, loc: Location = ("body",)) -> None:
    """Raise UnsafeInput when a parsed value (dicts, lists, strings) nests deeper than
    MAX_JSON_DEPTH or holds a NUL character or lone surrogate anywhere, keys included."""
    errors = list(_problems(value, loc, 0))
    if errors:
        raise UnsafeInput(errors[:10])


def load_json(body: bytes | str, loc: Location = ("body",)) -> Any:
    """Parse JSON and check it as `check_value` does. Raises UnsafeInput for unsafe input
    (including nesting too deep for the parser itself) and ValueError for malformed JSON."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise UnsafeInput([problem(list(loc), "json_too_deep")]) from None
    check_value(value, loc)
    return value
