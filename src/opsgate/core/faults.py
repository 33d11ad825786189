"""Test-only fault injection: named points where a process kills itself, so that a test can
prove what a crash at exactly that moment leaves behind.

Armed only by `OPSGATE_FAULT_INJECTION` (read once at start-up through the settings); unset,
as it always is in production, every point is a no-op. Never set it outside tests.
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum


class FaultPoint(StrEnum):
    # An approval has just reached quorum; its execution has not started.
    BEFORE_EXECUTION = "before_execution"


def reach(armed: FaultPoint | None, point: FaultPoint) -> None:
    """SIGKILL this process when `point` is the armed one; otherwise do nothing."""
    if armed is point:
        os.kill(os.getpid(), signal.SIGKILL)
