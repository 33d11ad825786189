"""Keeping secrets and sensitive data out of the audit trail (PCI DSS 3.3/3.4 spirit).

- Payload fields an action marks `sensitive` (``Field(json_schema_extra={"sensitive":
  True})``) are stored masked.
- Keys that name credentials (password, secret, token, ...) are always masked.
- Free text is scanned: Luhn-valid card numbers (13-19 digits, spaces or dashes allowed) keep
  only their last four digits; national-ID-like values (US SSN, UK NINO) are masked.

It also holds the one way a customer's name, email and phone are shown masked, used alike
by the console's pages and the API's answers (`mask_name`, `mask_email`, `mask_phone`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

MASK = "[redacted]"
# Key words that name a credential; matched against the words of a key ("X-Api-Key",
# "api_key", "clientSecret" and "access_token" all count; "footprint" does not).
_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "token", "apikey", "authorization",
     "cookie", "otp", "pin", "cvv", "cvc"}
)  # fmt: skip
_SECRET_PHRASES = ("api_key", "private_key", "access_key", "secret_key")
# Digits with optional single spaces or dashes between them, not touching other word chars.
_CARD = re.compile(r"(?<![0-9A-Za-z])\d(?:[ -]?\d){12,18}(?![0-9A-Za-z])")
_SSN = re.compile(r"(?<![0-9A-Za-z])\d{3}-\d{2}-\d{4}(?![0-9A-Za-z])")
_NINO = re.compile(
    r"(?<![0-9A-Za-z])[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
    r"(?![0-9A-Za-z])",
    re.IGNORECASE,
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card(digits: str) -> bool:
    """13-19 digits, Luhn-valid, and not starting with 0 (no card scheme issues those)."""
    return 13 <= len(digits) <= 19 and digits[0] != "0" and luhn_valid(digits)


def _mask_card(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    if _is_card(digits):
        return f"[card ending {digits[-4:]}]"
    # A card number followed or preceded by other digit groups (an expiry, a CVV): look for
    # a valid number made of whole groups, longest first.
    groups = re.split(r"([ -])", text)
    tokens = groups[0::2]
    for size in range(len(tokens) - 1, 0, -1):
        for start in range(len(tokens) - size + 1):
            candidate = "".join(tokens[start : start + size])
            if _is_card(candidate):
                before = "".join(groups[: 2 * start])
                after = (
                    "".join(groups[2 * (start + size) - 1 :]) if start + size < len(tokens) else ""
                )
                return f"{before}[card ending {candidate[-4:]}]{after}"
    return text


def mask_text(text: str) -> str:
    """Mask card numbers and national-ID-like values in free text."""
    text = _CARD.sub(_mask_card, text)
    text = _SSN.sub("[national id]", text)
    return _NINO.sub("[national id]", text)


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True for keys naming a credential; identifiers of one (`token_id`) are not secret."""
    normalised = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    normalised = re.sub(r"[^a-z0-9]+", "_", normalised.lower()).strip("_")
    if normalised.endswith(("_id", "_ids")):
        return False
    words = normalised.split("_")
    return any(
        word in _SECRET_WORDS or word.endswith(("password", "token", "secret")) for word in words
    ) or any(phrase in normalised for phrase in _SECRET_PHRASES)


def sensitive_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the model's fields marked `sensitive`."""
    marked = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("sensitive") is True:
            marked.add(name)
    return frozenset(marked)


def redact(value: Any, sensitive: Iterable[str] = ()) -> Any:
    """A copy of `value` with sensitive keys, secret-named keys and sensitive text masked."""
    keys = frozenset(sensitive)
    if isinstance(value, dict):
        return {
            k: MASK if (k in keys or is_secret_key(str(k))) and v is not None else redact(v, keys)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, keys) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int) and not isinstance(value, bool) and 13 <= len(str(abs(value))) <= 19:
        digits = str(abs(value))
        return f"[card ending {digits[-4:]}]" if _is_card(digits) else value
    return value


# --- personal data as an operator sees it before an audited reveal ---------------------------

PII_MASK = "•"


def mask_name(name: str) -> str:
    """`Mei Martinez` → `Mei M•••`: enough to greet, not enough to identify."""
    parts = name.split()
    if not parts:
        return ""
    first, rest = parts[0], parts[1:]
    return " ".join([first, *(part[:1] + PII_MASK * 3 for part in rest)])


def mask_email(email: str) -> str:
    """`mei.martinez0@example.com` → `m•••@example.com`."""
    local, sep, domain = email.partition("@")
    return f"{local[:1]}{PII_MASK * 3}{sep}{domain}" if sep else PII_MASK * 3


def mask_phone(phone: str) -> str:
    """Only the last four digits."""
    return PII_MASK * max(len(phone) - 4, 0) + phone[-4:]


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of `value` under `key`, in hex. The audit trail can then tell "the same
    term again" without keeping the term, and, unlike a plain hash, nobody without the key
    can test guesses against it (ten billion phone numbers are a quick brute force)."""
    # surrogatepass: a lone surrogate (possible in JSON text) still hashes, deterministically.
    return hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
