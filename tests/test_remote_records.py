"""Search providers and record views of a remote kind (opsgate/remote_records.py), as the
generic console and API pages call them: over signed HTTP to the service that owns the
records, personal data masked unless revealed, answers believed only when bound."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from opsgate.core.errors import TargetUnavailable
from opsgate.core.identity.actors import Actor
from opsgate.core.integrations.backends import BackendClient
from opsgate.core.integrations.config import Backend
from opsgate.plugin import ReadContext
from opsgate.remote_records import RemoteRecordView, RemoteSearch
from tests.ticket_service import SECRET, TicketService, running

LABELS = {"version": "Version", "subject": "Subject", "email": "Email", "customer": "Customer"}


@pytest.fixture
def service() -> Iterator[TicketService]:
    tickets = {
        "tkt_1": {"version": 3, "status": "open", "subject": "Card declined",
                  "email": "mei@example.com", "customer": "cus_7"},
        "tkt_2": {"version": 1, "status": "closed", "subject": "Address change",
                  "email": "li@example.com", "customer": "cus_8"},
    }  # fmt: skip
    with running(TicketService(tickets=tickets)) as started:
        yield started


@pytest.fixture
def backend(service: TicketService) -> Backend:
    return Backend("tickets", service.url, frozenset(), SECRET, 0.5, 1.0, 1, 0.0)


@pytest.fixture
def client() -> Iterator[BackendClient]:
    with BackendClient() as shared:
        yield shared


def context(reveal: bool = False) -> ReadContext:
    actor = Actor(id="usr_1", name="alice", roles=frozenset({"support_agent"}))
    return ReadContext(
        session=cast(Any, None),
        actor=actor,
        now=datetime.now(UTC),
        reveal_pii=reveal,
        request_id="req_records_test",
    )


def test_search_asks_the_service_and_masks_personal_data(
    service: TicketService, backend: Backend, client: BackendClient
) -> None:
    provider = RemoteSearch("ticket_search", ("ticket",), backend, client, frozenset({"email"}))
    found = provider.search(context(), "card", 5)
    assert [(h.target, h.label) for h in found.hits] == [("ticket:tkt_1", "Card declined")]
    assert found.hits[0].fields == {"status": "open", "email": "[redacted]"}
    asked = service.seen[-1]
    assert asked["path"] == "/v1/search/ticket?q=card&limit=5"
    assert asked["headers"]["X-Request-ID"] == "req_records_test"


def test_a_record_shows_labelled_fields_links_and_masks_pii_unless_revealed(
    backend: Backend, client: BackendClient
) -> None:
    view = RemoteRecordView(
        "ticket", backend, client, LABELS, frozenset({"email"}), {"customer": "customer"},
        "subject",
    )  # fmt: skip
    record = view.read(context(), "tkt_1")
    assert record is not None
    assert record.title == "Card declined"
    shown = {f.name: (f.label, f.value, f.link) for f in record.fields}
    assert shown["email"] == ("Email", "[redacted]", None)
    assert shown["customer"] == ("Customer", "cus_7", "customer:cus_7")
    assert record.related == {"customer:cus_7": "Customer cus_7"}
    revealed = view.read(context(reveal=True), "tkt_1")
    assert revealed is not None
    assert {f.name: f.value for f in revealed.fields}["email"] == "mei@example.com"
    assert view.read(context(), "tkt_404") is None


@pytest.mark.parametrize("mode", ["unsigned", "forged", "reflect"])
def test_an_unbound_answer_is_not_shown(
    service: TicketService, backend: Backend, client: BackendClient, mode: str
) -> None:
    service.mode = mode
    view = RemoteRecordView("ticket", backend, client, LABELS)
    with pytest.raises(TargetUnavailable, match="not verified"):
        view.read(context(), "tkt_1")
    provider = RemoteSearch("ticket_search", ("ticket",), backend, client)
    with pytest.raises(TargetUnavailable, match="not verified"):
        provider.search(context(), "card", 5)
