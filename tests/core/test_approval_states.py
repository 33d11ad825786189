"""The approval state machine: every allowed transition works, every other one is refused."""

from __future__ import annotations

import itertools

import pytest

from opsgate.core.approvals.states import (
    ALLOWED,
    TERMINAL,
    ApprovalStatus,
    IllegalTransition,
    check_transition,
)

ALL = list(ApprovalStatus)
PAIRS = list(itertools.product(ALL, ALL))


@pytest.mark.parametrize(("current", "new"), [p for p in PAIRS if p[1] in ALLOWED[p[0]]])
def test_allowed_transition(current: ApprovalStatus, new: ApprovalStatus) -> None:
    assert check_transition(current.value, new) == new


@pytest.mark.parametrize(("current", "new"), [p for p in PAIRS if p[1] not in ALLOWED[p[0]]])
def test_disallowed_transition(current: ApprovalStatus, new: ApprovalStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current.value, new)


def test_every_status_has_an_entry_and_final_states_are_terminal() -> None:
    assert set(ALLOWED) == set(ALL)
    assert {
        ApprovalStatus.REJECTED,
        ApprovalStatus.CANCELLED,
        ApprovalStatus.EXPIRED,
        ApprovalStatus.SUCCEEDED,
        ApprovalStatus.FAILED,
        ApprovalStatus.STALE,
    } == TERMINAL


def test_execution_is_reachable_only_through_approved() -> None:
    sources = {s for s, nexts in ALLOWED.items() if ApprovalStatus.EXECUTING in nexts}
    assert sources == {ApprovalStatus.APPROVED}
    sources = {s for s, nexts in ALLOWED.items() if ApprovalStatus.SUCCEEDED in nexts}
    assert sources == {ApprovalStatus.EXECUTING}
