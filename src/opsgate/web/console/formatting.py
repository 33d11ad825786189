"""How values read on a console page: money, times and names. Personal data is masked by
core/audit/redaction.py, the one masking the API uses too."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

# ISO 4217 minor-unit exponents that are not 2.
_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3}
_AMOUNT = re.compile(r"^[+-]?\d+(\.\d+)?$")


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def money(amount_minor: int | None, currency: str | None) -> str:
    """`123456, "USD"` → `1,234.56 USD`."""
    if amount_minor is None:
        return ""
    if not currency:
        return f"{amount_minor:,}"
    places = exponent(currency)
    value = Decimal(amount_minor).scaleb(-places)
    return f"{value:,.{places}f} {currency}"


def to_minor(text: str, currency: str) -> int | None:
    """`"1,234.56"` in USD → 123456; None unless it is a plain amount with at most the
    currency's decimal places."""
    cleaned = text.strip().replace(",", "").replace(" ", "")
    if not _AMOUNT.fullmatch(cleaned):
        return None
    try:
        minor = Decimal(cleaned).scaleb(exponent(currency))
    except InvalidOperation:
        return None
    return int(minor) if minor == minor.to_integral_value() else None


def major(amount_minor: int, currency: str) -> str:
    """The plain amount a money field shows for `amount_minor` (no grouping)."""
    places = exponent(currency)
    return f"{Decimal(amount_minor).scaleb(-places):.{places}f}"


def when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    """A span as people say it: `3 h 12 min`, `45 s`."""
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def humanize(name: str | None) -> str:
    """`fraud_suspected` → `Fraud suspected`."""
    if not name:
        return ""
    text = name.replace("_", " ").replace(".", " ").strip()
    return text[:1].upper() + text[1:]


def field_label(name: str | None) -> str:
    """`amount_minor` → `Amount`: amounts are shown as money, so the unit is not named."""
    return humanize((name or "").removesuffix("_minor"))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
