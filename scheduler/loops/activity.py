"""Writes the editor proxy activity that heartbeats brought (:class:`scheduler.access.
ProxyActivity`) every ``FLUSH_INTERVAL_S``: one transaction for the whole fleet, and none when
nobody used an editor. Views read what is still pending, so the interval only bounds what a
scheduler crash can lose (a few seconds of activity timestamps)."""

from __future__ import annotations

import logging

from scheduler.access import ProxyActivity
from scheduler.loops.base import Loop

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 5.0


class ActivityFlush(Loop):
    name = "activity"

    def __init__(self, activity: ProxyActivity, interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.activity = activity

    async def tick(self) -> None:
        written = await self.activity.flush()
        if written:
            log.debug("activity of %d notebooks written", written)
