"""Policy as code: validation at start-up, deny by default, and a stable version hash."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsgate.core.actions.conditions import Condition, Op
from opsgate.core.actions.policy import Capability, Policy, PolicyError, load_policy, parse_policy
from opsgate_demo.plugin import DEMO_POLICY
from tests.registries import build_registry

Doc = dict[str, Any]

# The demo backend's actions (opsgate_demo.plugin.register) plus the control layer's own.
REGISTRY = build_registry()
DEMO_DOC: Doc = tomllib.loads(DEMO_POLICY.read_text(encoding="utf-8"))


@cache
def demo_policy() -> Policy:
    # Loaded on first use, so that a broken demo policy fails the tests, not their collection.
    return load_policy(DEMO_POLICY, REGISTRY)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def render(doc: Doc) -> str:
    """TOML for a policy-shaped document: top-level scalars, then `[section.name]` tables."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, entries in doc.items():
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                lines.append(f"[{section}]\n{_key(name)} = {_value(entry)}")
                continue
            lines.append(f"\n[{section}.{_key(name)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def problems_of(doc: Doc | str) -> list[str]:
    text = doc if isinstance(doc, str) else render(doc)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, REGISTRY, source="test.toml")
    assert caught.value.problems, "a PolicyError must list at least one problem"
    return caught.value.problems


def demo() -> Doc:
    return copy.deepcopy(DEMO_DOC)


# --- the demo policy and deny by default ---------------------------------------------------


def test_demo_policy_loads_and_covers_every_registered_action() -> None:
    assert demo_policy().source == str(DEMO_POLICY)
    assert demo_policy().roles() == [
        "admin",
        "auditor",
        "monitor",
        "ops_lead",
        "risk_reviewer",
        "support_agent",
    ]
    for name in REGISTRY.names():
        assert demo_policy().allowed_roles(name), f"{name} has no role in the demo policy"


def test_the_rendered_demo_document_is_the_demo_policy() -> None:
    # Guards the helper the other tests rely on.
    assert parse_policy(render(demo()), REGISTRY).version == demo_policy().version


@pytest.mark.parametrize(
    ("roles", "action", "allowed"),
    [
        ({"support_agent"}, "customer.add_note", True),
        ({"support_agent"}, "account.unblock", False),
        ({"risk_reviewer"}, "account.unblock", True),
        ({"auditor"}, "customer.add_note", False),
        ({"auditor", "support_agent"}, "account.block", True),
        ({"nobody_listed"}, "customer.add_note", False),
        (set(), "customer.add_note", False),
        ({"admin"}, "money.print", False),
        ({"admin"}, "", False),
    ],
)
def test_may_start_denies_unless_a_role_is_listed(
    roles: set[str], action: str, allowed: bool
) -> None:
    assert demo_policy().may_start(frozenset(roles), action) is allowed


def test_auditor_may_start_no_action_at_all() -> None:
    assert not any(demo_policy().may_start(frozenset({"auditor"}), n) for n in REGISTRY.names())


def test_an_action_with_an_empty_allow_list_is_startable_by_nobody() -> None:
    doc = demo()
    doc["actions"]["account.unblock"]["allow"] = []
    policy = parse_policy(render(doc), REGISTRY)
    every_role = frozenset(policy.roles())
    assert not policy.may_start(every_role, "account.unblock")
    assert policy.allowed_roles("account.unblock") == []


@pytest.mark.parametrize(
    ("roles", "capability", "held"),
    [
        ({"auditor"}, Capability.AUDIT_READ, True),
        ({"support_agent"}, Capability.AUDIT_READ, False),
        ({"support_agent"}, Capability.RECORDS_SEARCH, True),
        ({"ghost"}, Capability.RECORDS_SEARCH, False),
        (set(), Capability.AUDIT_READ, False),
    ],
)
def test_capabilities_are_denied_unless_a_role_is_listed(
    roles: set[str], capability: Capability, held: bool
) -> None:
    assert demo_policy().has(frozenset(roles), capability) is held


# --- start-up validation: every mistake names its place ------------------------------------


def _unknown_action(doc: Doc) -> None:
    doc["actions"]["money.print"] = {"allow": ["admin"]}


def _unknown_role_in_allow(doc: Doc) -> None:
    doc["actions"]["account.block"]["allow"].append("ghost")


def _unknown_role_in_capability(doc: Doc) -> None:
    doc["capabilities"]["audit.read"]["allow"].append("ghost")


def _missing_action_entry(doc: Doc) -> None:
    del doc["actions"]["kyc.rerun_check"]


def _unknown_top_level_key(doc: Doc) -> None:
    doc["surprise"] = 1


def _unknown_key_in_action(doc: Doc) -> None:
    doc["actions"]["account.block"]["frobnicate"] = True


def _unknown_key_in_role(doc: Doc) -> None:
    doc["roles"]["admin"]["colour"] = "red"


def _missing_capability(doc: Doc) -> None:
    del doc["capabilities"]["audit.read"]


def _unknown_capability(doc: Doc) -> None:
    doc["capabilities"]["money.print"] = {"allow": ["admin"]}


def _bad_role_name(doc: Doc) -> None:
    doc["roles"]["Night-Shift"] = {"description": "badly named"}


def _allow_not_a_list(doc: Doc) -> None:
    doc["actions"]["account.block"]["allow"] = "admin"


def _role_without_description(doc: Doc) -> None:
    del doc["roles"]["auditor"]["description"]


def _missing_section(doc: Doc) -> None:
    del doc["roles"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_unknown_action, "actions.money.print: no such action is registered"),
        (_unknown_role_in_allow, "actions.account.block.allow: unknown role 'ghost'"),
        (_unknown_role_in_capability, "capabilities.audit.read.allow: unknown role 'ghost'"),
        (_missing_action_entry, "actions.kyc.rerun_check: registered action has no policy entry"),
        (_unknown_top_level_key, "surprise: unknown key"),
        (_unknown_key_in_action, "actions.account.block.frobnicate: unknown key"),
        (_unknown_key_in_role, "roles.admin.colour: unknown key"),
        (_missing_capability, "capabilities.audit.read: capability has no policy entry"),
        (_unknown_capability, "capabilities.money.print: no such capability"),
        (_bad_role_name, "roles.Night-Shift: role names are lower snake case"),
        (_allow_not_a_list, "actions.account.block.allow: "),
        (_role_without_description, "roles.auditor.description: "),
        (_missing_section, "roles: "),
    ],
)
def test_each_mistake_is_refused_with_its_place(
    mutate: Callable[[Doc], None], expected: str
) -> None:
    doc = demo()
    mutate(doc)
    problems = problems_of(doc)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_the_error_message_names_the_source_and_every_problem() -> None:
    doc = demo()
    _unknown_action(doc)
    with pytest.raises(PolicyError) as caught:
        parse_policy(render(doc), REGISTRY, source="/etc/opsgate/policy.toml")
    assert caught.value.source == "/etc/opsgate/policy.toml"
    assert "/etc/opsgate/policy.toml" in str(caught.value)
    assert "actions.money.print: no such action is registered" in str(caught.value)


def test_invalid_toml_is_refused_with_its_line() -> None:
    [problem] = problems_of(render(demo()) + "\n[roles.broken\n")
    assert problem.startswith("not valid TOML: ")
    assert "line" in problem


def test_a_missing_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path, REGISTRY)
    assert caught.value.source == str(path)
    assert caught.value.problems == ["cannot read: No such file or directory"]
    assert str(path) in str(caught.value)


def test_a_directory_is_refused_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path, REGISTRY)
    assert caught.value.source == str(tmp_path)
    [problem] = caught.value.problems
    assert problem.startswith("cannot read: ")


def test_a_file_that_is_not_utf8_is_refused_as_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(render(demo()).encode("utf-8").replace(b"Front-line", b"Front\xfeline"))
    with pytest.raises(PolicyError) as caught:
        load_policy(path, REGISTRY)
    assert caught.value.source == str(path)


def test_a_valid_file_loads_from_disk_with_its_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(render(demo()), encoding="utf-8")
    policy = load_policy(path, REGISTRY)
    assert (policy.source, policy.version) == (str(path), demo_policy().version)


def test_several_cross_reference_problems_are_reported_at_once() -> None:
    doc = demo()
    for mutate in (
        _unknown_action,
        _unknown_role_in_allow,
        _missing_action_entry,
        _missing_capability,
        _bad_role_name,
    ):
        mutate(doc)
    problems = problems_of(doc)
    assert sorted(problems) == sorted(
        [
            "actions.money.print: no such action is registered",
            "actions.account.block.allow: unknown role 'ghost'",
            "actions.kyc.rerun_check: registered action has no policy entry",
            "capabilities.audit.read: capability has no policy entry",
            "roles.Night-Shift: role names are lower snake case",
        ]
    )


def test_several_structural_problems_are_reported_at_once() -> None:
    doc = demo()
    for mutate in (_unknown_top_level_key, _unknown_key_in_action, _unknown_key_in_role):
        mutate(doc)
    assert sorted(problems_of(doc)) == [
        "actions.account.block.frobnicate: unknown key",
        "roles.admin.colour: unknown key",
        "surprise: unknown key",
    ]


def test_structural_and_cross_reference_problems_are_reported_together() -> None:
    doc = demo()
    _unknown_top_level_key(doc)
    _unknown_role_in_allow(doc)
    problems = problems_of(doc)
    assert "surprise: unknown key" in problems
    assert "actions.account.block.allow: unknown role 'ghost'" in problems


def test_a_role_name_with_a_trailing_newline_is_refused() -> None:
    doc = demo()
    doc["roles"]["night_shift\n"] = {"description": "Night shift."}
    assert problems_of(doc) == ["roles.night_shift\n: role names are lower snake case"]


# --- the version ----------------------------------------------------------------------------


def test_version_is_a_sha256_hex_digest() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", demo_policy().version)


def _styled(doc: Doc, style: str) -> str:
    """The same document written in another TOML style, with comments and odd spacing."""
    if style == "tables":
        return "# a comment\n\n" + render(doc).replace(" = ", "   =\t").replace("\n", "  \n")
    out = ["# same policy, other style"]
    for section, entries in doc.items():
        if style == "inline":
            body = ", ".join(
                f"{_key(name)} = {{ "
                + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in entry.items())
                + " }"
                for name, entry in entries.items()
            )
            out.append(f"{section} = {{ {body} }}  # {section}")
        else:  # dotted keys
            for name, entry in entries.items():
                out += [f"{section}.{_key(name)}.{_key(k)} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("style", ["tables", "inline", "dotted"])
def test_version_is_stable_under_reformatting(style: str) -> None:
    text = _styled(demo(), style)
    assert text != DEMO_POLICY.read_text(encoding="utf-8")
    assert parse_policy(text, REGISTRY).version == demo_policy().version


def test_version_ignores_duplicates_in_a_role_list() -> None:
    doc = demo()
    doc["actions"]["account.block"]["allow"] += ["admin", "admin"]
    assert parse_policy(render(doc), REGISTRY).version == demo_policy().version


def _shuffled(doc: Doc, data: st.DataObject) -> Doc:
    out: Doc = {}
    for section in data.draw(st.permutations(sorted(doc))):
        entries = doc[section]
        out[section] = {}
        for name in data.draw(st.permutations(sorted(entries))):
            entry = dict(entries[name])
            if "allow" in entry:
                entry["allow"] = data.draw(st.permutations(entry["allow"]))
            rule = entry.get("approval")
            if isinstance(rule, dict) and "approver_roles" in rule:  # another role list
                approvers = data.draw(st.permutations(rule["approver_roles"]))
                entry["approval"] = rule | {"approver_roles": approvers}
            out[section][name] = dict(
                (k, entry[k]) for k in data.draw(st.permutations(sorted(entry)))
            )
    return out


@settings(max_examples=40, deadline=None)
@given(data=st.data(), style=st.sampled_from(["tables", "inline", "dotted"]))
def test_version_is_invariant_under_any_ordering_of_tables_and_role_lists(
    data: st.DataObject, style: str
) -> None:
    text = _styled(_shuffled(demo(), data), style)
    assert parse_policy(text, REGISTRY).version == demo_policy().version


def _add_role_to_allow(doc: Doc) -> None:
    doc["actions"]["account.unblock"]["allow"].append("support_agent")


def _remove_role_from_allow(doc: Doc) -> None:
    doc["actions"]["account.block"]["allow"].remove("support_agent")


def _move_capability(doc: Doc) -> None:
    doc["capabilities"]["audit.read"]["allow"].append("support_agent")


def _add_role(doc: Doc) -> None:
    doc["roles"]["night_shift"] = {"description": "Night shift."}


@pytest.mark.parametrize(
    "mutate", [_add_role_to_allow, _remove_role_from_allow, _move_capability, _add_role]
)
def test_version_changes_when_meaning_changes(mutate: Callable[[Doc], None]) -> None:
    doc = demo()
    mutate(doc)
    changed: Policy = parse_policy(render(doc), REGISTRY)
    assert changed.version != demo_policy().version
    assert re.fullmatch(r"[0-9a-f]{64}", changed.version)


def test_a_role_added_to_an_allow_list_takes_effect() -> None:
    doc = demo()
    _add_role_to_allow(doc)
    changed = parse_policy(render(doc), REGISTRY)
    assert changed.may_start(frozenset({"support_agent"}), "account.unblock")
    assert not demo_policy().may_start(frozenset({"support_agent"}), "account.unblock")


# --- cumulative conditions -------------------------------------------------------------------


def _first_reversal_condition(doc: Doc) -> Doc:
    condition: Doc = doc["actions"]["payment.reverse"]["approval"]["tiers"][0]["when"][0]
    return condition


def _cumulative_without_window(doc: Doc) -> None:
    del _first_reversal_condition(doc)["window"]


def _window_on_a_payload_field(doc: Doc) -> None:
    _first_reversal_condition(doc).update(field="payload.amount_minor", window="24h")


def _window_that_is_no_duration(doc: Doc) -> None:
    _first_reversal_condition(doc)["window"] = "a day"


def _unknown_cumulative_scope(doc: Doc) -> None:
    _first_reversal_condition(doc)["field"] = "cumulative.team.amount"


def _abs_on_a_cumulative_amount(doc: Doc) -> None:
    _first_reversal_condition(doc)["abs"] = True


def _cumulative_amount_without_an_amount_field(doc: Doc) -> None:
    doc["actions"]["account.unblock"]["approval"]["tiers"] = [
        {
            "when": [{"field": "cumulative.target.amount", "window": "1h", "op": "gt", "value": 1}],
            "quorum": 1,
        }
    ]


def _cumulative_customer_of_a_kind_without_customers(doc: Doc) -> None:
    doc["actions"]["admin.assign_role"]["approval"]["tiers"] = [
        {
            "when": [
                {"field": "cumulative.customer.count", "window": "1h", "op": "gt", "value": 1}
            ],
            "quorum": 1,
        }
    ]


REVERSAL_TIER = "actions.payment.reverse.approval.tiers.0.when.0"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_cumulative_without_window, f"{REVERSAL_TIER}: Value error, cumulative.target.amount "),
        (_window_on_a_payload_field, f"{REVERSAL_TIER}: Value error, window applies only to"),
        (_window_that_is_no_duration, f"{REVERSAL_TIER}.window: Value error, 'a day' is not"),
        (_unknown_cumulative_scope, f"{REVERSAL_TIER}.field: String should match pattern"),
        (_abs_on_a_cumulative_amount, f"{REVERSAL_TIER}: Value error, cumulative.target.amount "),
        (
            _cumulative_amount_without_an_amount_field,
            "actions.account.unblock.approval.tiers.0.when.0: cumulative amounts add up the "
            "payload field 'amount_minor', which account.unblock does not have",
        ),
        (
            _cumulative_customer_of_a_kind_without_customers,
            "actions.admin.assign_role.approval.tiers.0.when.0: user targets do not say which "
            "customer they belong to",
        ),
    ],
)
def test_each_cumulative_mistake_is_refused_with_its_place(
    mutate: Callable[[Doc], None], expected: str
) -> None:
    doc = demo()
    mutate(doc)
    problems = problems_of(doc)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_the_demo_policy_judges_money_movement_on_cumulative_figures() -> None:
    keys = {a.key for a in demo_policy().aggregates_for("payment.reverse")}
    assert keys == {"target.amount@30d", "customer.amount@24h", "actor.amount@24h"}
    assert {a.key for a in demo_policy().aggregates_for("account.adjust_balance")} == {
        "target.amount@24h",
        "customer.amount@24h",
    }


def test_a_windows_change_changes_the_version() -> None:
    doc = demo()
    _first_reversal_condition(doc)["window"] = "7d"
    assert parse_policy(render(doc), REGISTRY).version != demo_policy().version


def test_a_condition_without_a_window_keeps_its_canonical_form() -> None:
    # So the versions of policies written before windows existed do not change.
    condition = Condition(field="payload.amount_minor", op=Op.GT, value=1)
    assert condition.model_dump(mode="json") == {
        "field": "payload.amount_minor",
        "op": "gt",
        "value": 1,
        "abs": False,
    }
