"""Payload models of declarative actions: a JSON Schema, checked by `jsonschema`, seen by the
rest of opsgate as an ordinary `Payload` model.

The model has one field per top-level property (typed `Any`: the schema, not pydantic, decides
what is valid), so policy conditions on `payload.<field>`, `sensitive` marks and console forms
work as for a Python action; `model_validate` runs the schema first and reports each violation
as a pydantic error at its place; `model_dump` gives back exactly the fields given (an absent
optional field stays absent, so a stored payload validates again at execution);
`model_json_schema` is the declared schema itself.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, JsonValue, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError

from opsgate.core.actions.registry import Payload

_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Messages that name only the schema's own words, never the rejected value.
_NAMED = frozenset({"required", "additionalProperties"})


class DeclaredPayload(Payload):
    """Base of the models `payload_model` builds; not used directly."""

    declared_schema: ClassVar[dict[str, Any]] = {}
    validator: ClassVar[Draft202012Validator]

    @classmethod
    def model_validate(
        cls, obj: Any, *, strict: bool | None = None, **kwargs: Any
    ) -> DeclaredPayload:
        """Validate against the declared schema, then build the model; raise
        pydantic.ValidationError listing each violation with its place."""
        problems = sorted(cls.validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if problems:
            details = [
                InitErrorDetails(
                    type=PydanticCustomError("json_schema", "{message}", {"message": _say(e)}),
                    loc=tuple(e.absolute_path),
                    input=None,
                )
                for e in problems
            ]
            raise ValidationError.from_exception_data(cls.__name__, details)
        return super().model_validate(obj, strict=strict, **kwargs)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        kwargs["exclude_unset"] = True
        return super().model_dump(**kwargs)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(cls.declared_schema)


def _say(error: Any) -> str:
    if error.validator in _NAMED:
        return str(error.message)[:200]
    return f"must satisfy {error.validator}: {error.validator_value!r}"[:200]


def schema_problems(schema: Mapping[str, Any]) -> list[str]:
    """What makes `schema` unusable as a payload schema (each with its place below it)."""
    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as exc:
        where = ".".join(str(p) for p in exc.absolute_path)
        return [f"{where + ': ' if where else ''}not a valid JSON Schema ({exc.message[:200]})"]
    problems = []
    if schema.get("type") != "object":
        problems.append('type: a payload schema must be of type "object"')
    if schema.get("additionalProperties", False) is not False:
        problems.append("additionalProperties: must be false (unknown fields are refused)")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        return [*problems, "properties: must be a table"]
    for name in properties:
        if not _FIELD_NAME.fullmatch(name) or name.startswith("model_"):
            problems.append(f"properties.{name}: a field name must be lower snake case")
    for name in schema.get("required", []):
        if name not in properties:
            problems.append(f"required: {name!r} is not among the properties")
    return problems


def payload_model(
    action: str, schema: Mapping[str, Any], sensitive: Iterable[str] = ()
) -> type[DeclaredPayload]:
    """The Payload model of declarative action `action` (its schema already checked by
    `schema_problems`). Unknown fields are refused whatever the schema says."""
    declared = copy.deepcopy(dict(schema)) | {"additionalProperties": False}
    declared.setdefault("title", action)
    marked = frozenset(sensitive)
    required = set(declared.get("required", []))
    fields: dict[str, Any] = {}
    for name, prop in declared.get("properties", {}).items():
        extra: dict[str, JsonValue] | None = {"sensitive": True} if name in marked else None
        description = prop.get("description") if isinstance(prop, Mapping) else None
        if name in required:
            fields[name] = (Any, Field(json_schema_extra=extra, description=description))
        else:
            fields[name] = (Any, Field(None, json_schema_extra=extra, description=description))
    class_name = "".join(part.title() for part in re.split(r"[._]", action)) + "Payload"
    model = create_model(class_name, __base__=DeclaredPayload, **fields)
    model.declared_schema = declared
    model.validator = Draft202012Validator(declared)
    return model
