"""The console says plainly what became of an action run by a remote backend: refused there,
not reachable, or unknown (and that it must not be repeated)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from tests.conftest import World
from tests.core.test_remote_actions import ScriptedBackend, failed_answer, remote_services
from tests.web.console.conftest import Browser
from tests.web.console.test_actions import reverse_form, small_payment


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def remote_browser(
    settings: Settings,
    services: Services,
    backend: ScriptedBackend,
    set_password: Callable[[str, str], None],
) -> Browser:
    app = create_app(settings, remote_services(services, backend), configure_logs=False)
    opened = Browser(app)
    set_password("alice", "correct horse battery staple")
    assert opened.sign_in("alice").status_code == 303
    return opened


def test_an_unknown_outcome_says_not_to_repeat_it(
    remote_browser: Browser, backend: ScriptedBackend, world: World
) -> None:
    backend.answers.append(lambda _request: failed_answer("unknown", None))
    payment = small_payment(world)
    page = remote_browser.post(
        "/console/actions/payment.reverse", reverse_form(remote_browser, payment["id"], "1.00")
    )
    assert page.status_code == 504
    assert "Outcome unknown" in page.text
    assert "Do not repeat it" in page.text
    assert "Backend call" in page.text and "bcl_" in page.text
    assert page.headers["x-request-id"] in page.text
    assert "Reverse payment again" not in page.text  # a fresh form could do it twice


@pytest.mark.parametrize(
    ("outcome", "status", "title"),
    [
        ("rejected", 409, "Refused by the backend"),
        ("unavailable", 503, "The backend is unavailable"),
    ],
)
def test_a_refusal_or_an_unreachable_backend_says_nothing_was_done(
    remote_browser: Browser,
    backend: ScriptedBackend,
    world: World,
    outcome: str,
    status: int,
    title: str,
) -> None:
    body = {"code": "reversal_exceeds_payment", "detail": "Only 1.00 remains."}
    backend.answers.append(lambda _request: failed_answer(outcome, status, body))
    payment = small_payment(world)
    page = remote_browser.post(
        "/console/actions/payment.reverse", reverse_form(remote_browser, payment["id"], "1.00")
    )
    assert page.status_code == status
    assert title in page.text
    assert "nothing was" in page.text
