"""The action registry refuses malformed or conflicting declarations; targets parse strictly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from opsgate.core.actions.registry import (
    ActionSpec,
    Outcome,
    Payload,
    Registry,
    RegistryError,
    RiskClass,
    TargetKind,
    TargetRef,
)
from tests.registries import build_registry


class Empty(Payload):
    pass


def handler(ctx: Any, target: Any, payload: Any) -> Outcome:
    return Outcome()


def kind(name: str = "widget") -> TargetKind:
    return TargetKind(
        name, lambda session, ident, lock: None, lambda obj: {}, fields=frozenset({"id", "version"})
    )


def spec(
    name: str = "widget.poke", target_kind: str = "widget", payload: type[Payload] = Empty
) -> ActionSpec:
    return ActionSpec(
        name, "Poke", "Poke a widget.", RiskClass.WRITE, target_kind, payload, handler
    )


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add_target_kind(kind())
    return registry


# --- action names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["widget.poke", "a.b", "customer.add_note", "kyc2.rerun_check", "w_1.v_2"]
)
def test_noun_verb_snake_case_names_are_accepted(registry: Registry, name: str) -> None:
    registry.add(spec(name))
    assert registry.get(name) is not None
    assert registry.names() == [name]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "widget",
        "widget.",
        ".poke",
        "widget.poke.now",
        "Widget.poke",
        "widget.Poke",
        "widget.poke-it",
        "widget-x.poke",
        "1widget.poke",
        "widget._poke",
        "widget poke",
        "widget .poke",
        " widget.poke",
        "widget:poke",
        "wídget.poke",
    ],
)
def test_other_action_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(RegistryError, match=r"noun\.verb"):
        registry.add(spec(name))
    assert registry.names() == []


@pytest.mark.parametrize("what", ["action", "target_kind", "target_ref"])
def test_a_trailing_newline_is_not_part_of_a_valid_name(registry: Registry, what: str) -> None:
    attempts: dict[str, Callable[[], object]] = {
        "action": lambda: registry.add(spec("widget.poke\n")),
        "target_kind": lambda: registry.add_target_kind(kind("gadget\n")),
        "target_ref": lambda: TargetRef.parse("customer\n:cus_1"),
    }
    with pytest.raises((RegistryError, ValueError)):
        attempts[what]()


def test_a_duplicate_action_is_refused_and_the_first_kept(registry: Registry) -> None:
    first = spec()
    registry.add(first)
    with pytest.raises(RegistryError, match="registered twice"):
        registry.add(spec())
    assert registry.get("widget.poke") is first
    assert registry.specs() == [first]


# --- target kinds ------------------------------------------------------------------------------


def test_a_duplicate_target_kind_is_refused_and_the_first_kept(registry: Registry) -> None:
    first = registry.target_kind("widget")
    with pytest.raises(RegistryError, match="registered twice"):
        registry.add_target_kind(kind())
    assert registry.target_kind("widget") is first


@pytest.mark.parametrize("name", ["", "Widget", "wid-get", "1widget", "wid get", "wid.get"])
def test_target_kind_names_must_be_lower_snake_case(registry: Registry, name: str) -> None:
    with pytest.raises(RegistryError, match="lower snake case"):
        registry.add_target_kind(kind(name))
    assert registry.target_kind(name) is None


def test_an_action_on_an_unknown_target_kind_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="unknown target kind 'gadget'"):
        registry.add(spec(target_kind="gadget"))
    assert registry.get("widget.poke") is None


# --- payload models ----------------------------------------------------------------------------


class Loose(Payload):
    model_config = ConfigDict(extra="allow")


class Ignoring(Payload):
    model_config = ConfigDict(extra="ignore")


class PlainModel(BaseModel):
    note: str = ""


@pytest.mark.parametrize("model", [Loose, Ignoring, PlainModel])
def test_a_payload_model_that_does_not_forbid_extra_fields_is_refused(
    registry: Registry, model: type[BaseModel]
) -> None:
    with pytest.raises(RegistryError, match="must forbid extra fields"):
        registry.add(spec(payload=model))  # type: ignore[arg-type]
    assert registry.get("widget.poke") is None


def test_a_strict_payload_model_is_accepted_and_refuses_extra_fields(registry: Registry) -> None:
    registry.add(spec())
    registered = registry.get("widget.poke")
    assert registered is not None
    assert registered.payload_schema()["additionalProperties"] is False


def test_every_demo_action_is_registered_on_a_registered_kind() -> None:
    demo = build_registry()
    assert demo.names() == sorted(demo.names())
    for action in demo.specs():
        assert demo.target_kind(action.target_kind) is not None
        assert action.payload_model.model_config.get("extra") == "forbid"


# --- target references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind_name", "ident"),
    [
        ("customer:cus_01J0000000000000000000000", "customer", "cus_01J0000000000000000000000"),
        ("account:acc_1", "account", "acc_1"),
        ("a:b", "a", "b"),
        ("kind_2:x:y", "kind_2", "x:y"),
        ("payment:" + "p" * 64, "payment", "p" * 64),
    ],
)
def test_target_ref_parses_kind_and_id(text: str, kind_name: str, ident: str) -> None:
    ref = TargetRef.parse(text)
    assert (ref.kind, ref.id) == (kind_name, ident)
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "customer",
        "customer:",
        ":cus_1",
        "Customer:cus_1",
        "cus-tomer:cus_1",
        "1customer:cus_1",
        " customer:cus_1",
        "customer :cus_1",
        "payment:" + "p" * 65,
    ],
)
def test_target_ref_refuses_malformed_strings(text: str) -> None:
    with pytest.raises(ValueError, match="kind:id"):
        TargetRef.parse(text)


KINDS = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
IDS = st.text(min_size=1, max_size=64)


@settings(max_examples=200)
@given(kind_name=KINDS, ident=IDS)
def test_target_ref_round_trips_valid_strings(kind_name: str, ident: str) -> None:
    text = f"{kind_name}:{ident}"
    ref = TargetRef.parse(text)
    assert (ref.kind, ref.id) == (kind_name, ident)
    assert str(TargetRef.parse(text)) == text


@settings(max_examples=200)
@given(text=st.text(max_size=80))
def test_target_ref_either_refuses_or_round_trips_any_string(text: str) -> None:
    try:
        ref = TargetRef.parse(text)
    except ValueError:
        return
    assert str(ref) == text
    assert 1 <= len(ref.id) <= 64
    assert ref.kind[:1].isascii() and ref.kind[:1].islower()
