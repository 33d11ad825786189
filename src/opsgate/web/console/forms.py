"""Action forms, rendered from each action's payload JSON schema.

The console only shapes input: form strings become the payload the gateway validates (a
money field typed as `50.00` becomes minor units). Every check, from permission to payload
validity, is the gateway's; its field errors come back next to the fields.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opsgate.core.actions.registry import ActionSpec
from opsgate.web.console.formatting import exponent, humanize, to_minor

PAYLOAD_PREFIX = "payload."
LONG_TEXT = 200  # strings allowed longer than this get a textarea
_IN_MINOR_UNITS = re.compile(r",?\s*in minor units", re.IGNORECASE)


def new_idempotency_key() -> str:
    """Minted when a form is rendered: submitting that form twice runs the action once."""
    return "con_" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    help: str | None
    widget: str  # text | textarea | select | integer | money | checkbox
    required: bool
    choices: tuple[tuple[str, str], ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    currency: str | None = None

    @property
    def input_name(self) -> str:
        return PAYLOAD_PREFIX + self.name

    @property
    def input_id(self) -> str:
        return "f-" + self.name.replace("_", "-")


def fields_for(spec: ActionSpec, target_state: Mapping[str, Any] | None) -> list[FormField]:
    """The form fields of `spec`'s payload, in declaration order. An integer field named
    `*_minor` is money in the target's currency when the target has one."""
    schema = spec.payload_schema()
    required = set(schema.get("required", []))
    currency = (
        str(target_state["currency"]) if target_state and "currency" in target_state else None
    )
    fields = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type")
        description = prop.get("description")
        common: dict[str, Any] = {"name": name, "required": name in required}
        if "enum" in prop:
            choices = tuple((str(v), humanize(str(v))) for v in prop["enum"])
            fields.append(
                FormField(
                    label=humanize(name),
                    help=description,
                    widget="select",
                    choices=choices,
                    **common,
                )
            )
        elif kind == "integer" and name.endswith("_minor") and currency:
            help_text = _IN_MINOR_UNITS.sub("", description or "").strip()
            example = "50" if exponent(currency) == 0 else "50." + "0" * exponent(currency)
            fields.append(
                FormField(
                    label=f"{humanize(name.removesuffix('_minor'))} ({currency})",
                    help=f"{help_text}. In {currency}, e.g. {example}." if help_text else None,
                    widget="money",
                    currency=currency,
                    **common,
                )
            )
        elif kind == "integer":
            fields.append(
                FormField(
                    label=humanize(name),
                    help=description,
                    widget="integer",
                    minimum=prop.get("minimum"),
                    maximum=prop.get("maximum"),
                    **common,
                )
            )
        elif kind == "boolean":
            fields.append(
                FormField(label=humanize(name), help=description, widget="checkbox", **common)
            )
        else:
            max_length = prop.get("maxLength")
            widget = "textarea" if max_length is None or max_length > LONG_TEXT else "text"
            fields.append(
                FormField(
                    label=humanize(name),
                    help=description,
                    widget=widget,
                    min_length=prop.get("minLength"),
                    max_length=max_length,
                    **common,
                )
            )
    return fields


@dataclass(frozen=True)
class Submission:
    """What a submitted form says: the envelope for the gateway, and the raw values to show
    again if it is refused."""

    target: str
    reason: str
    payload: dict[str, Any]
    values: dict[str, str]
    # Money typed in a shape that cannot be minor units; said next to the field.
    unreadable: dict[str, str]
    idempotency_key: str | None

    def envelope(self) -> dict[str, Any]:
        return {"target": self.target, "payload": self.payload, "reason": self.reason}


def read_submission(fields: list[FormField], form: Mapping[str, str]) -> Submission:
    """Turn form strings into a payload. Empty optional fields are left out; anything that
    cannot be converted is passed on as typed, for the gateway to refuse (and audit)."""
    payload: dict[str, Any] = {}
    values: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    for field in fields:
        raw = form.get(field.input_name)
        if field.widget == "checkbox":
            payload[field.name] = raw is not None
            values[field.name] = "on" if raw is not None else ""
            continue
        text = (raw or "").strip()
        values[field.name] = text
        if not text:  # a required one is then reported missing by the gateway
            continue
        if field.widget == "money" and field.currency:
            minor = to_minor(text, field.currency)
            if minor is None:
                places = exponent(field.currency)
                unreadable[field.name] = (
                    f"Enter an amount in {field.currency} with at most {places} decimal places, "
                    f"e.g. {'50' if places == 0 else '50.' + '0' * places}."
                )
                payload[field.name] = text
            else:
                payload[field.name] = minor
        else:
            payload[field.name] = text
    return Submission(
        target=(form.get("target") or "").strip(),
        reason=(form.get("reason") or "").strip(),
        payload=payload,
        values=values,
        unreadable=unreadable,
        idempotency_key=form.get("idempotency_key") or None,
    )


def field_errors(errors: list[dict[str, Any]] | None) -> dict[str, str]:
    """The gateway's `errors` keyed by form field: payload fields by name, and `reason`,
    `target` or `form` for the rest."""
    found: dict[str, str] = {}
    for error in errors or []:
        loc = [str(part) for part in error.get("loc", [])]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        if len(loc) >= 2 and loc[0] == "payload":
            key = loc[1]
        elif loc and loc[0] in ("reason", "target"):
            key = loc[0]
        else:
            key = "form"
        message = str(error.get("msg", "is not valid"))
        found.setdefault(key, _plain(message))
    return found


def _plain(message: str) -> str:
    """Pydantic's messages, minus the jargon operators do not need."""
    message = message.replace("Input should be", "Should be").replace("Value error, ", "")
    if message == "Field required" or message.startswith("Should be a valid string"):
        return "Required."
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")
