"""Declarative target kinds and actions (opsgate/declarations.py): what a file declares is
what the registry, the integrations and `opsgate policy check` see, and every mistake is named
with its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.core.audit.redaction import sensitive_fields
from opsgate.core.integrations.config import IntegrationsError
from opsgate.declarations import DeclarationsError, parse_declarations
from opsgate.plugins import BUILT_IN_POLICY, DECLARATIONS_PLUGIN, load_setup
from opsgate.settings import get_settings

SECRET = "s" * 40
ENV = {"TICKETS_SECRET": SECRET}

VALID = """
[backends.tickets]
url = "http://127.0.0.1:9100"
secret_env = "TICKETS_SECRET"

[target_kinds.ticket]
backend = "tickets"
fields = { version = "Version", status = "Status", email = "Email" }
pii = ["email"]
search = true

[actions."ticket.close"]
label = "Close a ticket"
description = "Close it."
risk = "write"
target_kind = "ticket"
sensitive = ["note"]

[actions."ticket.close".payload_schema]
type = "object"
required = ["resolution"]
properties.resolution = { type = "string", enum = ["fixed", "wont_fix"] }
properties.note = { type = "string", maxLength = 20 }
"""

POLICY = """
[roles.support_agent]
description = "Support."

[actions."ticket.close"]
allow = ["support_agent"]

[actions."ticket.close".approval]
mode = "enforce"
approver_roles = ["admin"]
expires_in = "24h"
tiers = [{ quorum = 1, when = [{ field = "payload.resolution", op = "eq", value = "wont_fix" }] }]
"""


def test_a_valid_file_declares_kinds_actions_and_the_bound_backend() -> None:
    found = parse_declarations(VALID, env=ENV)
    (kind,) = found.target_kinds
    assert (kind.name, kind.remote, kind.fields) == (
        "ticket",
        "tickets",
        frozenset({"version", "status", "email"}),
    )
    (spec,) = found.actions
    assert spec.preview is not None
    schema = spec.payload_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["resolution"]["enum"] == ["fixed", "wont_fix"]
    assert sensitive_fields(spec.payload_model) == {"note"}
    (backend,) = found.backends
    assert (backend.actions, backend.secret) == (frozenset({"ticket.close"}), SECRET)
    assert [p.kinds for p in found.search] == [("ticket",)]
    assert [v.kind for v in found.views] == ["ticket"]


def test_the_payload_model_runs_the_json_schema() -> None:
    (spec,) = parse_declarations(VALID, env=ENV).actions
    good = spec.payload_model.model_validate({"resolution": "fixed"})
    assert good.model_dump(mode="json") == {"resolution": "fixed"}  # absent stays absent
    with pytest.raises(ValidationError) as caught:
        spec.payload_model.model_validate({"resolution": "gone", "note": "x" * 30, "extra": 1})
    places = sorted(tuple(e["loc"]) for e in caught.value.errors())
    assert places == [(), ("note",), ("resolution",)]
    assert "gone" not in str(caught.value)


BROKEN = {
    "no-version": (
        ('version = "Version", ', ""),
        "declarations.target_kinds.ticket.fields: must declare 'version'",
    ),
    "unknown-backend": (
        ('backend = "tickets"', 'backend = "ledger"'),
        "declarations.target_kinds.ticket.backend: no backend 'ledger'",
    ),
    "schema-not-object": (
        ('type = "object"', 'type = "array"'),
        'declarations.actions."ticket.close".payload_schema.type: a payload schema must be',
    ),
    "schema-invalid": (
        ("maxLength = 20", 'maxLength = "twenty"'),
        'declarations.actions."ticket.close".payload_schema.properties.note.maxLength: not a',
    ),
    "sensitive-unknown": (
        ('sensitive = ["note"]', 'sensitive = ["pin"]'),
        "declarations.actions.\"ticket.close\".sensitive: 'pin' is not a payload field",
    ),
    "pii-unknown": (
        ('pii = ["email"]', 'pii = ["phone"]'),
        "declarations.target_kinds.ticket.pii: 'phone' is not among the fields",
    ),
    "unknown-key": (
        ("search = true", "search = true\ncolour = 1"),
        "declarations.target_kinds.ticket.colour: unknown key",
    ),
    "plain-http": (
        ("http://127.0.0.1:9100", "http://tickets.internal"),
        "declarations.backends.tickets.url",
    ),
    "unknown-kind": (
        ('target_kind = "ticket"', 'target_kind = "case"'),
        "declarations.actions.\"ticket.close\".target_kind: no target kind 'case'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_mistake_is_named_with_its_place(case: str) -> None:
    (old, new), place = BROKEN[case]
    assert old in VALID
    with pytest.raises(DeclarationsError) as caught:
        parse_declarations(VALID.replace(old, new, 1), env=ENV)
    assert any(p.startswith(place) for p in caught.value.problems), caught.value.problems


def test_an_unset_secret_is_named_when_the_integrations_are_loaded(
    files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = load_setup("none", None, None, files / "declarations.toml")
    assert setup.load_integrations().backend_for("ticket.close") is not None
    monkeypatch.delenv("TICKETS_SECRET")
    unset = load_setup("none", None, None, files / "declarations.toml")
    assert unset.registry.get("ticket.close") is not None  # the file itself is valid
    with pytest.raises(IntegrationsError) as caught:
        unset.load_integrations()
    assert caught.value.problems == [
        "declarations.backends.tickets.secret_env: environment variable TICKETS_SECRET must "
        "hold a secret of at least 32 characters (it is unset)"
    ]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "declarations.toml").write_text(VALID)
    (tmp_path / "policy.toml").write_text(BUILT_IN_POLICY.read_text() + POLICY)
    monkeypatch.setenv("TICKETS_SECRET", SECRET)
    monkeypatch.setenv("OPSGATE_DATABASE_URL", "sqlite:///:memory:")
    monkeypatch.setenv("OPSGATE_PLUGINS", "none")
    monkeypatch.setenv("OPSGATE_POLICY", str(tmp_path / "policy.toml"))
    monkeypatch.setenv("OPSGATE_DECLARATIONS", str(tmp_path / "declarations.toml"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_without_a_plugin_the_file_is_the_plugin_declarations_and_binds_its_backend(
    files: Path,
) -> None:
    setup = load_setup("none", None, None, files / "declarations.toml")
    assert [e.plugin.name for e in setup.plugins] == [DECLARATIONS_PLUGIN]
    assert setup.registry.get("ticket.close") is not None
    backend = setup.load_integrations().backend_for("ticket.close")
    assert backend is not None and backend.name == "tickets"


def test_an_integrations_file_binding_a_declared_action_elsewhere_is_refused(files: Path) -> None:
    (files / "integrations.toml").write_text(
        '[backends.other]\nurl = "http://127.0.0.1:9200"\nactions = ["ticket.close"]\n'
        'secret_env = "TICKETS_SECRET"\n'
    )
    setup = load_setup("none", None, files / "integrations.toml", files / "declarations.toml")
    with pytest.raises(IntegrationsError) as caught:
        setup.load_integrations()
    assert "backends.other.actions: 'ticket.close' is a declarative action" in str(caught.value)


def test_policy_check_validates_the_declarations_with_the_policy(files: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["policy", "check"])
    assert ok.exit_code == 0, ok.output
    (files / "policy.toml").write_text(
        (files / "policy.toml").read_text().replace("payload.resolution", "payload.colour")
    )
    bad_policy = runner.invoke(app, ["policy", "check"])
    assert bad_policy.exit_code == 1
    assert "ticket.close has no payload field 'colour'" in " ".join(bad_policy.output.split())
    (files / "declarations.toml").write_text(VALID.replace('pii = ["email"]', 'pii = ["x"]'))
    bad_file = runner.invoke(app, ["policy", "check"])
    assert bad_file.exit_code == 2
    assert "declarations.target_kinds.ticket.pii: 'x'" in " ".join(bad_file.output.split())


def test_a_remote_kind_whose_backend_is_not_configured_stops_start_up(files: Path) -> None:
    from dataclasses import replace

    from opsgate.core.actions.registry import Registry

    setup = load_setup("none", None, None, files / "declarations.toml")
    registry = Registry()
    for kind in setup.registry.target_kinds():
        registry.add_target_kind(replace(kind, remote="elsewhere") if kind.remote else kind)
    with pytest.raises(IntegrationsError) as caught:
        replace(setup, registry=registry).load_integrations()
    assert "target_kinds.ticket: its records are read from backend 'elsewhere'" in str(caught.value)
