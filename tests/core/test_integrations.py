"""The integrations file: backends and webhooks, validated at start-up
(core/integrations/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.core.actions.registry import Registry
from opsgate.core.integrations.config import (
    NO_INTEGRATIONS,
    IntegrationsError,
    load_integrations,
    parse_integrations,
)
from opsgate.settings import get_settings
from tests.registries import build_registry

SECRET = "s" * 32
ENV = {"OPSGATE_LEDGER_SECRET": SECRET, "OPSGATE_HOOK_SECRET": "h" * 40}

GOOD = """
[backends.ledger]
url = "http://127.0.0.1:8100/"
actions = ["payment.reverse", "account.adjust_balance"]
secret_env = "OPSGATE_LEDGER_SECRET"
connect_timeout_seconds = 0.5
timeout_seconds = 2.5
max_attempts = 4
backoff_seconds = 0.1

[webhooks.risk_slack]
url = "https://hooks.example.com/T000/B000"
format = "slack"
events = ["approval.requested"]

[webhooks.audit_feed]
url = "https://feed.example.com/in"
secret_env = "OPSGATE_HOOK_SECRET"
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry()


def problems(text: str, registry: Registry, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(IntegrationsError) as caught:
        parse_integrations(text, registry, source="test.toml", env=ENV if env is None else env)
    assert "test.toml" in str(caught.value)
    return caught.value.problems


def backend(actions: str = '["payment.reverse"]', **lines: str) -> str:
    fields = {
        "url": '"http://127.0.0.1:8100"',
        "actions": actions,
        "secret_env": '"OPSGATE_LEDGER_SECRET"',
    } | lines
    name = fields.pop("name", "ledger")
    return f"[backends.{name}]\n" + "".join(f"{key} = {value}\n" for key, value in fields.items())


def test_a_good_file_is_read_with_its_settings(registry: Registry) -> None:
    integrations = parse_integrations(GOOD, registry, env=ENV)
    ledger = integrations.backends["ledger"]
    assert ledger.url == "http://127.0.0.1:8100"
    assert ledger.actions == {"payment.reverse", "account.adjust_balance"}
    assert ledger.secret == SECRET
    assert (ledger.connect_timeout, ledger.timeout, ledger.max_attempts, ledger.backoff) == (
        0.5,
        2.5,
        4,
        0.1,
    )
    slack, feed = integrations.webhooks["risk_slack"], integrations.webhooks["audit_feed"]
    assert (slack.format, slack.events, slack.secret) == (
        "slack",
        frozenset({"approval.requested"}),
        None,
    )
    assert feed.format == "json"
    assert feed.secret == "h" * 40
    assert feed.events == {
        "approval.requested",
        "approval.decided",
        "approval.executed",
        "approval.expired",
    }


def test_a_backend_gets_the_documented_defaults(registry: Registry) -> None:
    ledger = parse_integrations(backend(), registry, env=ENV).backends["ledger"]
    assert (ledger.connect_timeout, ledger.timeout, ledger.max_attempts, ledger.backoff) == (
        1.0,
        5.0,
        3,
        0.2,
    )


def test_the_secret_never_shows_in_a_representation(registry: Registry) -> None:
    integrations = parse_integrations(GOOD, registry, env=ENV)
    assert SECRET not in repr(integrations)
    assert "h" * 40 not in repr(integrations)


def test_backend_for_names_the_bound_backend_or_none(registry: Registry) -> None:
    integrations = parse_integrations(GOOD, registry, env=ENV)
    bound = integrations.backend_for("account.adjust_balance")
    assert bound is not None
    assert bound.name == "ledger"
    assert integrations.backend_for("account.block") is None
    assert NO_INTEGRATIONS.backend_for("payment.reverse") is None


def test_subscribers_are_the_webhooks_of_an_event(registry: Registry) -> None:
    integrations = parse_integrations(GOOD, registry, env=ENV)
    assert [h.name for h in integrations.subscribers("approval.requested")] == [
        "audit_feed",
        "risk_slack",
    ]
    assert [h.name for h in integrations.subscribers("approval.expired")] == ["audit_feed"]


def test_an_unknown_action_is_named_with_its_place(registry: Registry) -> None:
    found = problems(backend('["payment.reverse", "payment.teleport"]'), registry)
    assert found == ["backends.ledger.actions: 'payment.teleport' is not a registered action"]


def test_an_action_bound_twice_names_both_backends(registry: Registry) -> None:
    text = backend() + backend(name="shadow_ledger")
    found = problems(text, registry)
    assert found == [
        "backends.shadow_ledger.actions: 'payment.reverse' is already bound to backend 'ledger'"
    ]


def test_an_unset_secret_variable_is_named(registry: Registry) -> None:
    found = problems(backend(), registry, env={})
    assert found == [
        "backends.ledger.secret_env: environment variable OPSGATE_LEDGER_SECRET must hold a "
        "secret of at least 32 characters (it is unset)"
    ]


def test_a_short_secret_is_refused_without_showing_it(registry: Registry) -> None:
    found = problems(backend(), registry, env={"OPSGATE_LEDGER_SECRET": "x" * 31})
    assert found == [
        "backends.ledger.secret_env: environment variable OPSGATE_LEDGER_SECRET must hold a "
        "secret of at least 32 characters"
    ]


@pytest.mark.parametrize("url", ['"ftp://ledger"', '"ledger:8100"', '"http://"', '""'])
def test_a_url_that_is_not_http_is_refused(registry: Registry, url: str) -> None:
    found = problems(backend(url=url), registry)
    assert found == ["backends.ledger.url: Value error, must be an http:// or https:// URL"]


@pytest.mark.parametrize(
    "url", ['"http://ledger.internal:8100"', '"http://10.0.0.7"', '"http://127.0.0.1.nip.io"']
)
def test_a_backend_over_plain_http_off_loopback_is_refused_naming_the_place(
    registry: Registry, url: str
) -> None:
    found = problems(backend(url=url), registry)
    assert found == [
        "backends.ledger.url: Value error, must be an https:// URL (plain http:// is "
        "allowed only to a loopback address: 127.0.0.1, ::1 or localhost)"
    ]


def test_serve_refuses_a_plain_http_backend_with_one_clear_message(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "integrations.toml"
    path.write_text(backend(url='"http://ledger.internal:8100"'), encoding="utf-8")
    monkeypatch.setenv("OPSGATE_INTEGRATIONS", str(path))
    monkeypatch.setenv("OPSGATE_LEDGER_SECRET", SECRET)
    monkeypatch.setenv("OPSGATE_DATABASE_URL", "sqlite:///:memory:")
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["serve", "--port", "1"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    text = "".join(result.output.split())  # Rich wraps the message at any character
    assert "".join(f"integrations {path} are invalid".split()) in text
    assert "backends.ledger.url:Valueerror,mustbeanhttps://URL" in text
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        '"https://ledger.internal:8443"',
        '"http://127.0.0.1:8100"',
        '"http://127.8.0.1"',
        '"http://localhost:8100"',
        '"http://[::1]:8100/ledger"',
    ],
)
def test_a_backend_over_https_or_on_loopback_is_accepted(registry: Registry, url: str) -> None:
    parse_integrations(backend(url=url), registry, env=ENV)


@pytest.mark.parametrize("url", ['"http://user:pw@ledger:8100"', '"https://token@ledger"'])
def test_a_url_with_credentials_is_refused(registry: Registry, url: str) -> None:
    found = problems(backend(url=url), registry)
    assert found == [
        "backends.ledger.url: Value error, must not carry credentials (name the secret with "
        "secret_env)"
    ]


def test_unknown_keys_are_named_wherever_they_are(registry: Registry) -> None:
    text = backend(colour='"red"') + '[webhooks.feed]\nurl = "http://h"\nretries = 3\n'
    text += '[queues.main]\nurl = "http://q"\n'
    found = problems(text, registry)
    assert sorted(found) == [
        "backends.ledger.colour: unknown key",
        "queues: unknown key",
        "webhooks.feed.retries: unknown key",
    ]


@pytest.mark.parametrize(
    ("setting", "place"),
    [
        ("timeout_seconds = 0", "timeout_seconds"),
        ("max_attempts = 11", "max_attempts"),
        ("backoff_seconds = -1", "backoff_seconds"),
        ('secret_env = "lower_case"', "secret_env"),
    ],
)
def test_out_of_range_settings_are_named(registry: Registry, setting: str, place: str) -> None:
    key, value = setting.split(" = ")
    found = problems(backend(**{key: value}), registry)
    assert len(found) == 1
    assert found[0].startswith(f"backends.ledger.{place}: ")


def test_a_backend_without_actions_is_refused(registry: Registry) -> None:
    found = problems(backend("[]"), registry)
    assert len(found) == 1
    assert found[0].startswith("backends.ledger.actions: ")


def test_a_backend_name_must_be_lower_snake_case(registry: Registry) -> None:
    found = problems(backend(name="Ledger"), registry)
    assert found == ["backends.Ledger: a backend name must be lower snake case"]


def test_an_unknown_webhook_event_is_named(registry: Registry) -> None:
    text = '[webhooks.feed]\nurl = "http://h"\nsecret_env = "OPSGATE_HOOK_SECRET"\n'
    text += 'events = ["approval.requested", "approval.sneezed"]\n'
    found = problems(text, registry)
    assert len(found) == 1
    assert found[0].startswith(
        "webhooks.feed.events: Value error, unknown event(s) approval.sneezed"
    )


def test_a_json_webhook_must_name_a_secret(registry: Registry) -> None:
    found = problems('[webhooks.feed]\nurl = "http://h"\n', registry)
    assert found == ["webhooks.feed.secret_env: JSON webhooks are signed; name the secret"]


def test_every_mistake_is_listed_at_once(registry: Registry) -> None:
    text = backend('["payment.teleport"]', secret_env='"OPSGATE_UNSET"')
    text += '[webhooks.feed]\nurl = "http://h"\n'
    assert len(problems(text, registry)) == 3


def test_text_that_is_not_toml_is_refused(registry: Registry) -> None:
    found = problems("[backends.ledger\n", registry)
    assert len(found) == 1
    assert found[0].startswith("not valid TOML: ")


def test_no_file_means_no_integrations(registry: Registry) -> None:
    assert load_integrations(None, registry) is NO_INTEGRATIONS


def test_a_file_is_loaded_with_its_path_named_in_errors(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "integrations.toml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_integrations(path, registry, env=ENV).backends["ledger"].name == "ledger"
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(tmp_path / "missing.toml", registry, env=ENV)
    assert caught.value.source == str(tmp_path / "missing.toml")
    assert caught.value.problems[0].startswith("cannot read: ")
