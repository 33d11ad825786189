"""A small, deterministic KYC screen standing in for a vendor call.

It applies the checks a vendor's basic tier does on the data we hold: a plausible email and
phone number, a full name, and a match against a (demo) watchlist of names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opsgate_demo.models import Customer, KycStatus

# Demo watchlist. A real deployment calls its screening provider instead.
WATCHLIST = frozenset({"viktor petrov", "li wei zhang", "maria gonzalez rivera"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE)


@dataclass(frozen=True)
class Screening:
    status: KycStatus
    findings: list[str]


def screen(customer: Customer) -> Screening:
    """Screen a customer; `failed` for broken identity data, `review` for a watchlist hit."""
    findings = []
    if not _EMAIL.match(customer.email):
        findings.append("email_malformed")
    if not 8 <= len(customer.phone) <= 15 or not customer.phone.isdigit():
        findings.append("phone_malformed")
    if len(customer.name.split()) < 2:
        findings.append("name_incomplete")
    if findings:
        return Screening(KycStatus.FAILED, findings)
    if " ".join(customer.name.split()).casefold() in WATCHLIST:
        return Screening(KycStatus.REVIEW, ["watchlist_name_match"])
    return Screening(KycStatus.PASSED, [])
