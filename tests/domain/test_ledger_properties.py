"""A stateful property test: random reversals, adjustments, retries, approvals and failures
never unbalance the ledger, desynchronise a balance from its entries, or over-reverse."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, select

from opsgate.core.approvals.gate import Decision
from opsgate.core.errors import OpsgateError
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.web.services import Services
from opsgate_demo.models import LedgerTransaction, Payment
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World
from tests.domain.test_money import ledger_is_consistent

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}


def test_random_money_movement_keeps_the_ledger_sound(
    services: Services, db: Database, world: World
) -> None:
    with db.reading() as session:
        payments = list(
            session.scalars(
                select(Payment.id).where(Payment.amount_minor.between(5_000, 900_000)).limit(3)
            )
        )
    accounts = [world.account(n) for n in range(2)]
    people = {name: Actor(world.user_ids[name], name, ROLES[name]) for name in ROLES}
    counter = iter(range(10**9))

    def transactions() -> int:
        with db.reading() as session:
            return int(session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0)

    class Ledger(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[tuple[str, str, str, dict[str, Any]]] = []
            self.pending: list[tuple[str, str]] = []

        def _submit(self, who: str, action: str, body: dict[str, Any], key: str) -> None:
            request_id = f"sm-{next(counter)}"
            self.sent.append((who, action, key, body))
            try:
                result = services.gateway.submit(people[who], action, body, Origin(request_id), key)
            except OpsgateError:
                return
            if getattr(result, "approval_id", None):
                self.pending.append((result.approval_id, who))  # type: ignore[union-attr]

        @rule(
            payment=st.sampled_from(payments),
            percent=st.integers(1, 70),
            who=st.sampled_from(["alice", "rita"]),
        )
        def reverse(self, payment: str, percent: int, who: str) -> None:
            with db.reading() as session:
                amount = session.get(Payment, payment).amount_minor  # type: ignore[union-attr]
            body = {
                "target": f"payment:{payment}",
                "payload": {
                    "amount_minor": max(1, amount * percent // 100),
                    "reason_code": "customer_dispute",
                },
                "reason": "dispute",
            }
            self._submit(who, "payment.reverse", body, f"key-{next(counter)}")

        @rule(account=st.sampled_from(accounts), amount=st.integers(-200_000, 200_000).filter(bool))
        def adjust(self, account: str, amount: int) -> None:
            body = {
                "target": f"account:{account}",
                "payload": {"amount_minor": amount, "memo": "correction"},
                "reason": "posting error",
            }
            self._submit("rita", "account.adjust_balance", body, f"key-{next(counter)}")

        @rule(data=st.data())
        def retry(self, data: st.DataObject) -> None:
            if not self.sent:
                return
            who, action, key, body = data.draw(st.sampled_from(self.sent))
            before = transactions()
            try:
                result = services.gateway.submit(
                    people[who], action, body, Origin(f"sm-{next(counter)}"), key
                )
            except OpsgateError:
                pass
            else:
                assert result.replayed
            assert transactions() == before  # a retry never moves money again

        @rule(
            data=st.data(),
            decision=st.sampled_from([Decision.APPROVE, Decision.REJECT]),
            reviewer=st.sampled_from(["olga", "raj", "rita"]),
        )
        def decide(self, data: st.DataObject, decision: str, reviewer: str) -> None:
            if not self.pending:
                return
            approval_id, requester = data.draw(st.sampled_from(self.pending))
            refusal = None
            try:
                services.approvals.decide(
                    approval_id,
                    people[reviewer],
                    decision,
                    "checked",
                    Origin(f"sm-{next(counter)}"),
                )
            except OpsgateError as exc:
                refusal = exc.code
            if requester == reviewer:
                assert refusal == "self_approval"

        @invariant()
        def ledger_sound(self) -> None:
            ledger_is_consistent(db)

    run_state_machine_as_test(
        Ledger,
        settings=settings(
            max_examples=12,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
