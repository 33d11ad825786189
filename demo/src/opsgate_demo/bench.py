"""Uncontrolled twins of actions, for `make bench` only (OPSGATE_BENCH_ENDPOINTS=1).

Each does the same domain work as its action with no authentication, policy, validation
beyond the model, or audit, so that the benchmark measures what the control layer costs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.registry import ActionContext
from opsgate.core.errors import NotFound
from opsgate.core.identity.actors import Actor
from opsgate.core.ids import new_id
from opsgate.core.request_ids import new_request_id
from opsgate.web.deps import ServicesDep
from opsgate_demo.models import Note, Payment
from opsgate_demo.money import ReversePayment, reverse_payment

router = APIRouter(prefix="/bench", include_in_schema=False)
_BENCH_ACTOR = Actor(id="bench", name="bench", roles=frozenset())


@router.post("/customers/{customer_id}/notes")
async def bare_add_note(
    customer_id: str, request: Request, services: ServicesDep
) -> dict[str, Any]:
    body = await request.json()

    def write() -> str:
        with services.db.writing() as session:
            note = Note(
                id=new_id("not"),
                customer_id=customer_id,
                author_id="bench",
                author_name="bench",
                text=str(body["payload"]["text"]),
                created_at=services.clock.now(),
            )
            session.add(note)
            session.commit()
            return note.id

    note_id = await run_in_threadpool(write)
    return {"status": "succeeded", "result": {"note_id": note_id}}


@router.post("/payments/{payment_id}/reversals")
async def bare_reverse_payment(
    payment_id: str, request: Request, services: ServicesDep
) -> dict[str, Any]:
    """The same ledger posting as `payment.reverse` (the domain handler itself, on a locked
    payment), with no authentication, policy, limits, idempotency or audit."""
    body = await request.json()
    payload = ReversePayment.model_validate(body["payload"])

    def write() -> dict[str, Any]:
        with services.db.writing() as session:
            payment = session.get(Payment, payment_id, with_for_update=True)
            if payment is None:
                raise NotFound(f"No payment {payment_id}.")
            ctx = ActionContext(
                session=session,
                actor=_BENCH_ACTOR,
                action="payment.reverse",
                request_id=new_request_id(),
                reason="bench",
                now=services.clock.now(),
            )
            outcome = reverse_payment(ctx, payment, payload)
            session.commit()
            return dict(outcome.result)

    result = await run_in_threadpool(write)
    return {"status": "succeeded", "result": result}
