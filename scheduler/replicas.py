"""This scheduler process among the others on the same database: its presence, how far it has
written what it holds in memory, and the background work it holds a lease on.

Any number of replicas serve one database (PostgreSQL; on SQLite there is one). What a replica
keeps in memory for speed (heartbeats, editor proxy activity, sync progress: write-behind
buffers flushed once per loop tick) must never be needed by another replica before it is
written, so:

* **Presence** (table ``replicas``): every tick a replica flushes its buffers and, in the same
  transaction, stamps ``flushed_at`` with the time the flush began (:meth:`Replica.stamp`):
  everything it received before then is in the database. :meth:`Replica.flushed_through` is the
  earliest such time over the live replicas; a host is judged lost only if it was silent for
  its TTL *before that time* (:meth:`scheduler.hosts.HostService.mark_lost`), so a heartbeat
  still sitting in another replica's buffer always counts. A replica not seen for
  :attr:`Replica.dead_after_s` is dead (crashed, or cut off from the database): it is not waited
  for, and what it had not flushed is lost with it (at most one tick of heartbeats, which the
  agents, failing over to a live replica, send again within one interval).
* **Leases** (table ``leases``): the periodic jobs (lost hosts, runtime limits, restarts, ends of
  drains, retention) run on the replica holding the ``maintenance`` lease
  (:meth:`Replica.hold`), renewed every tick and taken over by another replica once it has
  lapsed. Every job is a write transaction, and writers are serialized across replicas
  (:mod:`scheduler.db`), so even two holders (a clock jump) could not apply a change twice:
  each re-reads the state it changes. The lease makes the work happen once instead of once
  per replica.

A clean shutdown removes the replica's row and gives its lease up (:meth:`Replica.retire`), so
the others neither wait for it nor for its lease to lapse. A replica that crashed holds its
lease until it lapses; on SQLite, where one process is all there is, the next start clears
what the crashed one left (:meth:`Replica.join`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable

from scheduler.db import Database, Tx

log = logging.getLogger(__name__)

#: The lease the periodic maintenance jobs run under.
MAINTENANCE = "maintenance"

#: Tables that describe the running processes, not the installation: never copied
#: (:mod:`scheduler.copy_db`), and not part of what a request is expected to change.
BOOKKEEPING = frozenset({"replicas", "leases", "request_nonces"})

#: Rows of replicas dead this long are removed (their history says nothing useful any more).
FORGET_AFTER_S = 86400.0


class Replica:
    def __init__(self, db: Database, clock: Callable[[], float], *, tick_s: float) -> None:
        self.db = db
        self.clock = clock
        self.id = secrets.token_hex(8)
        #: For operators reading the table: which machine and process this is.
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # Many missed ticks in a row: under a burst of writes a tick waits its turn for the
        # writers' lock, and a lease that lapsed then would move between replicas for nothing.
        # Waiting this long for a crashed replica only delays judging its hosts' silence.
        self.dead_after_s = max(30.0, 10 * tick_s)
        self.lease_s = self.dead_after_s
        self._held: set[str] = set()

    async def join(self) -> None:
        """At start. On a database only one process may serve (SQLite), rows left by an
        earlier process that crashed describe nobody: its lease would hold the periodic jobs
        back until it lapsed."""
        if self.db.shared:
            return
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM replicas")
            await tx.run("DELETE FROM leases")

    async def stamp(self, tx: Tx, flushed_at: float) -> None:
        """Record that everything received before ``flushed_at`` is written (call in the
        transaction that wrote it)."""
        now = self.clock()
        changed = await tx.run(
            "UPDATE replicas SET seen_at = ?, flushed_at = ? WHERE id = ?",
            (now, flushed_at, self.id),
        )
        if changed == 0:  # first tick, or removed as dead while cut off from the database
            await tx.run(
                "INSERT INTO replicas (id, name, started_at, seen_at, flushed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.id, self.name, now, now, flushed_at),
            )
            log.info("replica=%s (%s) joined", self.id, self.name)

    async def flushed_through(self, tx: Tx, now: float) -> float:
        """The time before which every live replica has written what it received (``now``
        when no other replica is live and this one has not stamped yet)."""
        row = await tx.one(
            "SELECT MIN(flushed_at) AS through FROM replicas WHERE seen_at >= ?",
            (now - self.dead_after_s,),
        )
        through = row["through"] if row is not None else None
        return now if through is None else min(now, through)

    async def hold(self, tx: Tx, lease: str) -> bool:
        """Take or renew ``lease`` until ``lease_s`` from now; False while another live
        replica holds it."""
        now = self.clock()
        changed = await tx.run(
            "UPDATE leases SET holder = ?, until = ? WHERE name = ? AND (holder = ? OR until < ?)",
            (self.id, now + self.lease_s, lease, self.id, now),
        )
        if changed == 0:
            changed = await tx.run(
                "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (lease, self.id, now + self.lease_s),
            )
        held = changed > 0
        if held and lease not in self._held:
            log.info("replica=%s now runs %s", self.id, lease)
        elif not held and lease in self._held:
            log.info("replica=%s lost the %s lease to another replica", self.id, lease)
        self._held = self._held | {lease} if held else self._held - {lease}
        return held

    async def forget_dead(self, tx: Tx, now: float) -> None:
        await tx.run("DELETE FROM replicas WHERE seen_at < ?", (now - FORGET_AFTER_S,))

    async def retire(self) -> None:
        """Leave cleanly: others stop waiting for this replica's flushes at once, and its
        leases are free for the next tick of another replica."""
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM replicas WHERE id = ?", (self.id,))
            await tx.run("DELETE FROM leases WHERE holder = ?", (self.id,))
        self._held.clear()
