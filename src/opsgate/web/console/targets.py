"""What the action and approval pages show of a target: its recorded state and the page an
operator goes back to. Reads only, through the target kind (`TargetKind.customer_of`) and the
plugins' record views: opsgate knows no kind of record itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from opsgate.core.actions.registry import Registry, TargetRef
from opsgate.web.records import Catalogue, page_of

if TYPE_CHECKING:
    from opsgate.web.services import Services


@dataclass(frozen=True)
class TargetSummary:
    ref: TargetRef
    state: dict[str, Any] | None
    # Where an operator goes back to: the page of the customer the target belongs to.
    home: str | None


def target_summary(
    session: Session, registry: Registry, pages: Catalogue, target: str
) -> TargetSummary | None:
    """The target's recorded state (as the audit trail sees it: no personal data) and its
    customer's page; None when `target` is not a `kind:id` string. A remote kind's state is
    not read here (no network call under a database session): see `remote_summary`."""
    try:
        ref = TargetRef.parse(target)
    except ValueError:
        return None
    kind = registry.target_kind(ref.kind)
    if kind is not None and kind.remote is not None:
        return TargetSummary(ref, None, None)
    obj = kind.load(session, ref.id, False) if kind else None
    if kind is None or obj is None:
        return TargetSummary(ref, None, None)
    customer = kind.customer_of(session, obj) if kind.customer_of else None
    return TargetSummary(ref, kind.snapshot(obj), page_of(pages, customer) if customer else None)


def summary_of(services: Services, target: str) -> TargetSummary | None:
    """`target_summary`, reading a remote kind's state from its service (signed, outside any
    transaction: Gateway.target_state) instead of the database."""
    try:
        ref = TargetRef.parse(target)
    except ValueError:
        return None
    kind = services.registry.target_kind(ref.kind)
    if kind is not None and kind.remote is not None:
        return TargetSummary(ref, services.gateway.target_state(target), None)
    with services.db.reading() as session:
        return target_summary(session, services.registry, services.records, target)
