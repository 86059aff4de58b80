"""Wake-ups for agents long-polling their assignments, whichever replica they poll.

The assignment version itself lives in ``hosts.assignments_version`` (so it survives restarts
and is bumped in the same transaction as the change); this board only wakes waiters once that
transaction has committed: this replica's at once (:meth:`AssignmentBoard.wake_on_commit`), the
other replicas' through the database's announcements (channel :data:`CHANNEL`, payload
``"<replica> <host>,<host>..."``; PostgreSQL ``NOTIFY``, sent with the commit), which each
replica's board receives in :meth:`AssignmentBoard.announced`. A lost announcement (the
listening connection broke) wakes every waiter: their agents read the version again, and a
needless answer only costs one more poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from scheduler.db import Tx

CHANNEL = "nbfleet_assignments"

#: PostgreSQL refuses payloads of 8000 bytes or more; host ids are short, so a few per notice.
MAX_PAYLOAD = 7000


class AssignmentBoard:
    def __init__(self, origin: str = "") -> None:
        #: This replica's id: its own announcements come back to it and are ignored.
        self.origin = origin
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

    def wake_on_commit(self, tx: Tx, host_ids: Iterable[str]) -> None:
        """Wake the long-polls of ``host_ids`` on every replica once ``tx`` commits."""
        hosts = sorted(set(host_ids))
        for host_id in hosts:
            tx.after_commit(lambda host_id=host_id: self.wake(host_id))
        chunk: list[str] = []
        size = 0
        for host_id in hosts:
            if chunk and size + len(host_id) + 1 > MAX_PAYLOAD:
                tx.notify(CHANNEL, f"{self.origin} {','.join(chunk)}")
                chunk, size = [], 0
            chunk.append(host_id)
            size += len(host_id) + 1
        if chunk:
            tx.notify(CHANNEL, f"{self.origin} {','.join(chunk)}")

    def announced(self, payload: str) -> None:
        """Another replica committed changes for these hosts (``""``: announcements may have
        been missed, so anything may have changed)."""
        if not payload:
            self.wake_all()
            return
        origin, _, hosts = payload.partition(" ")
        if origin == self.origin:
            return  # woken after our own commit already
        for host_id in hosts.split(","):
            self.wake(host_id)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """True if woken, False on timeout."""
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
