"""Uncontrolled twins of actions, for `make bench` only (OPSGATE_BENCH_ENDPOINTS=1).

Each does the same domain work as its action with no authentication, policy, validation
beyond the model, or audit, so that the benchmark measures what the control layer costs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from opsgate.core.ids import new_id
from opsgate.domain.models import Note
from opsgate.web.deps import ServicesDep

router = APIRouter(prefix="/bench", include_in_schema=False)


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
