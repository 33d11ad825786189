"""An action form shows its target's state (an account's balance, a payment's amount) only to
a viewer who may start that action or read records, and showing it is a read recorded in the
audit trail, as the customer page's is. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from opsgate.core.identity.users import ensure_user
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows

SHOWN = 'id="target-title"'  # the card with the target's state (its balance, for an account)


def monitoring_person(services: Services) -> str:
    """A person (not the `prom` service account, which never signs in) whose only role is
    `monitor`: it may neither start actions nor read records."""
    with services.db.writing() as session:
        user = ensure_user(session, "mona", "Mona Watts", ("monitor",), now=services.clock.now())
        session.commit()
        return user.id


def balance_of(world: World) -> str:
    account = world.summary.accounts[0]
    return f"account:{account['id']}"


def test_a_role_that_may_neither_start_nor_read_is_refused_and_audited(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    target = balance_of(world)
    mona = monitoring_person(services)
    page = browser("mona").get(f"/console/actions/account.adjust_balance?target={target}")
    assert page.status_code == 403
    assert SHOWN not in page.text
    [denied] = audit_rows(services, result="denied", error_code="forbidden")
    assert denied.actor_id == mona


def test_a_refused_post_does_not_show_the_target_to_such_a_role(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    monitoring_person(services)
    response = browser("mona").post(
        "/console/actions/account.adjust_balance",
        {"target": balance_of(world), "payload.amount_minor": "1.00", "reason": "x"},
    )
    assert response.status_code == 403
    assert SHOWN not in response.text


def test_showing_the_target_state_is_an_audited_read(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    target = balance_of(world)
    page = browser("alice").get(f"/console/actions/account.block?target={target}")
    assert page.status_code == 200
    assert SHOWN in page.text
    [read] = audit_rows(services, action="records.read", target=target)
    assert read.actor_id == world.user_ids["alice"]
    assert read.result == "succeeded"
    assert read.request_id == page.headers["x-request-id"]


def test_a_reader_who_may_not_start_the_action_still_sees_the_state_audited(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    target = balance_of(world)
    page = browser("alice").get(f"/console/actions/account.adjust_balance?target={target}")
    assert page.status_code == 200
    assert "Your roles may not start this action" in page.text
    assert len(audit_rows(services, action="records.read", target=target)) == 1
