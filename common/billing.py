"""How a run is billed, the same on the agent (which reports minutes) and the scheduler (which
closes runs and reports usage): every commenced minute of RUNNING."""

from __future__ import annotations

import math


def billed_minutes(running_since: float, until: float) -> int:
    """Commenced minutes of a run from ``running_since`` to ``until``: 0 at its first instant,
    1 for (0, 60] seconds, and so on."""
    return max(0, math.ceil((until - running_since) / 60))
