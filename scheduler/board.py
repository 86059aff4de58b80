"""Wake-ups for agents long-polling their assignments.

The assignment version itself lives in ``hosts.assignments_version`` (so it survives restarts
and is bumped in the same transaction as the change); this board only wakes waiters once that
transaction has committed.
"""

from __future__ import annotations

import asyncio


class AssignmentBoard:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, host_id: str) -> asyncio.Event:
        """The event the next change for ``host_id`` sets. Take it *before* reading the
        version, so a change committed in between is not missed."""
        event = self._events.get(host_id)
        if event is None:
            event = self._events[host_id] = asyncio.Event()
        return event

    def wake_all(self) -> None:
        """Answer every waiting long-poll now (at shutdown, so agents are not left hanging and
        the server does not wait out their timeouts before it can exit)."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def wake(self, host_id: str) -> None:
        event = self._events.pop(host_id, None)
        if event is not None:
            event.set()

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """True if woken, False on timeout."""
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
