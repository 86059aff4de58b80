"""Hosts as operators see them: liveness, cordon and drain, the listing.

A host's liveness (``hosts.state``) and an operator's intent for it (``hosts.intent``) are two
small state machines (:mod:`common.states`); every change of either goes through
:func:`scheduler.host_states.change_host_state`.

**Heartbeats** are held in memory as they arrive (:meth:`HostService.heartbeat` does no
database write) and written in one transaction per loop tick (:meth:`flush`), so a large fleet
costs one write per second, not one per heartbeat. The interval given to agents grows with the
fleet so the fleet stays within ``heartbeat_budget_per_s``; the TTL is ``heartbeat_misses``
intervals. Besides liveness and GPU metrics they bring the free and total bytes of the host's
workspace disk (placement skips a host below :class:`scheduler.placement.DiskFloor`, and the
listing says so) and the workspace disk use of its running notebooks (kept on the notebook
while the host holds it).

**Lost hosts** (:meth:`mark_lost`): a host silent for longer than the TTL becomes LOST; its
notebooks go to ERROR with reason "host lost" (billed up to its last heartbeat) and its GPUs
stop being offered (placement takes READY hosts only). A notebook with ``restart_on_timeout``
is to be started again elsewhere from its last workspace snapshot (``desired`` restarted, see
:mod:`scheduler.lifecycle`). A lost host that
heartbeats again is told to register, and registering makes it READY, its intent unchanged. For
one TTL after the scheduler starts nobody is declared lost: silence while the scheduler itself
was down says nothing about the hosts.

**Cordon** stops new placements on a host; **drain** also stops what runs there (notebooks with
``restart_on_timeout`` are started again on another host once stopped), and once nothing is left
on the host the drain is over and it stays cordoned (:meth:`end_drains`); **uncordon** undoes
both.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from common import wire
from common.config import SchedulerConfig
from common.errors import not_found
from common.states import ON_HOST, HostIntent, HostState, NotebookState
from scheduler.board import AssignmentBoard
from scheduler.db import Database, Row, Tx, WriteBehind, run_values
from scheduler.host_states import HOST_STATE_COLUMNS, change_host_state
from scheduler.lifecycle import RESTARTED, change_state, stop_by_scheduler
from scheduler.placement import DiskFloor

log = logging.getLogger(__name__)

S = NotebookState
_ON_HOST = tuple(sorted(ON_HOST))
_ON_HOST_MARKS = ", ".join("?" for _ in _ON_HOST)


@dataclass
class _Beat:
    """What a host's heartbeats brought since the last flush: the latest of each figure, and
    every notebook's latest workspace disk use (heartbeats carry only new measurements)."""

    at: float
    gpus: list[wire.GpuInfo]
    disk: wire.DiskSpace | None
    workspaces: dict[str, wire.WorkspaceUse] = field(default_factory=dict)


class HostService(WriteBehind):
    def __init__(
        self,
        db: Database,
        config: SchedulerConfig,
        board: AssignmentBoard,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.config = config
        self.board = board
        self.clock = clock
        #: host → what its heartbeats brought, not yet written.
        self._pending: dict[str, _Beat] = {}
        #: Hosts known and not lost; a heartbeat from anything else is told to register.
        self._alive: set[str] = set()
        self._loaded = False
        #: The scheduler heard nobody while it was down: silence counts from its start.
        self._started_at = clock()

    # ------------------------------------------------------------ liveness

    async def load(self) -> None:
        self._started_at = self.clock()
        async with self.db.read() as tx:
            rows = await tx.all("SELECT id FROM hosts WHERE state = ?", (HostState.READY,))
        self._alive = {r["id"] for r in rows}
        self._loaded = True

    @property
    def interval_s(self) -> float:
        """The heartbeat interval for the current fleet size."""
        budget = max(self.config.heartbeat_budget_per_s, 1e-6)
        return max(self.config.heartbeat_interval_s, len(self._alive) / budget)

    @property
    def ttl_s(self) -> float:
        return self.interval_s * self.config.heartbeat_misses

    def registered(self, host_id: str) -> None:
        self._alive.add(host_id)
        self._pending.pop(host_id, None)

    async def refresh(self, tx: Tx) -> None:
        """Take the hosts other replicas registered or declared lost (once per tick)."""
        rows = await tx.all("SELECT id FROM hosts WHERE state = ?", (HostState.READY,))
        self._alive = {r["id"] for r in rows}
        self._loaded = True

    async def heartbeat(self, host_id: str, request: wire.Heartbeat) -> wire.HeartbeatReply:
        if not self._loaded:
            await self.load()
        known = host_id in self._alive
        if not known:
            # Registered through another replica since this one last looked?
            row = await self.db.query_one("SELECT state FROM hosts WHERE id = ?", (host_id,))
            known = row is not None and row["state"] == HostState.READY
            if known:
                self._alive.add(host_id)
        if known:
            earlier = self._pending.get(host_id)
            beat = _Beat(self.clock(), request.gpus, request.disk)
            if earlier is not None:
                beat.workspaces = earlier.workspaces
            for use in request.workspaces:
                beat.workspaces[use.notebook] = use
            self._pending[host_id] = beat
        else:
            log.info(
                "host=%s heartbeat from an unknown or lost host; asking it to register", host_id
            )
        return wire.HeartbeatReply(
            known=known,
            heartbeat_interval_s=self.interval_s,
            heartbeat_misses=self.config.heartbeat_misses,
        )

    async def _write(self, tx: Tx, pending: dict[str, _Beat]) -> None:
        # A few statements for the whole fleet (run_values), not one per host and per GPU.
        await run_values(
            tx,
            "UPDATE hosts SET last_heartbeat = "
            "CASE WHEN last_heartbeat > v.column1 THEN last_heartbeat ELSE v.column1 END, "
            "disk_free_bytes = v.column2, disk_total_bytes = v.column3 "
            "FROM (VALUES {values}) AS v WHERE hosts.id = v.column4 AND hosts.state = v.column5",
            "(CAST(? AS DOUBLE PRECISION), CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?)",
            (
                (
                    beat.at,
                    None if beat.disk is None else beat.disk.free_bytes,
                    None if beat.disk is None else beat.disk.total_bytes,
                    host,
                    HostState.READY.value,
                )
                for host, beat in pending.items()
            ),
        )
        await run_values(
            tx,
            # An idle GPU's figures stay the same: its row is not written again.
            "UPDATE gpus SET memory_used_mb = v.column1, utilization_pct = v.column2 "
            "FROM (VALUES {values}) AS v WHERE gpus.uuid = v.column3 AND gpus.host_id = v.column4 "
            "AND (gpus.memory_used_mb IS DISTINCT FROM v.column1 "
            "OR gpus.utilization_pct IS DISTINCT FROM v.column2)",
            "(CAST(? AS BIGINT), CAST(? AS BIGINT), ?, ?)",
            (
                (g.memory_used_mb, g.utilization_pct, g.uuid, host)
                for host, beat in pending.items()
                for g in beat.gpus
            ),
        )
        # Only for notebooks the host still holds: a late figure never outlives a stop.
        await run_values(
            tx,
            "UPDATE notebooks SET workspace_used_bytes = v.column1, workspace_used_at = v.column2 "
            "FROM (VALUES {values}) AS v WHERE notebooks.id = v.column3 "
            "AND notebooks.host_id = v.column4 "
            "AND COALESCE(notebooks.workspace_used_at, 0) <= v.column2",
            "(CAST(? AS BIGINT), CAST(? AS DOUBLE PRECISION), ?, ?)",
            (
                (use.used_bytes, use.measured_at, use.notebook, host)
                for host, beat in pending.items()
                for use in beat.workspaces.values()
            ),
        )

    async def mark_lost(
        self, tx: Tx, *, now: float, flushed_through: float | None = None
    ) -> list[str]:
        """Declare hosts silent for longer than the TTL lost; returns their ids.

        ``flushed_through``: the time before which every replica has written the heartbeats it
        received (:meth:`scheduler.replicas.Replica.flushed_through`; ``now`` when omitted). A
        host counts as silent only up to then: a heartbeat another replica still holds in memory
        is not silence."""
        ttl = self.ttl_s
        if now - self._started_at <= ttl:
            return []  # right after a restart: agents have not had a TTL to reach us yet
        known_until = now if flushed_through is None else min(now, flushed_through)
        rows = await tx.all(
            f"SELECT {HOST_STATE_COLUMNS}, last_heartbeat FROM hosts "
            "WHERE state = ? AND last_heartbeat < ?",
            (HostState.READY, known_until - ttl),
        )
        for host in rows:
            host_id, last = host["id"], host["last_heartbeat"]
            self._alive.discard(host_id)
            self._pending.pop(host_id, None)
            notebooks = await tx.all(
                f"SELECT * FROM notebooks WHERE COALESCE(host_id, last_host_id) = ? "
                f"AND state IN ({_ON_HOST_MARKS})",
                (host_id, *_ON_HOST),
            )
            silent = now - last
            await change_host_state(
                tx,
                host,
                HostState.LOST,
                f"no heartbeat for {silent:.0f}s (TTL {ttl:.0f}s); {len(notebooks)} notebooks "
                "to ERROR; it is ready again when its agent registers",
                now=now,
            )
            for row in notebooks:
                again = bool(row["restart_on_timeout"]) and row["state"] in (
                    S.STARTING,
                    S.RUNNING,
                )
                await change_state(
                    tx,
                    row,
                    S.ERROR,
                    f"host lost: {host_id} sent no heartbeat for {silent:.0f}s"
                    + ("; restarting on another host from its last snapshot" if again else ""),
                    now=now,
                    board=self.board,
                    billed_until=last,
                    desired=RESTARTED if again else "stopped",
                )
        return [r["id"] for r in rows]

    # ------------------------------------------------------------ operators

    async def cordon(self, host_id: str) -> wire.Host:
        async with self.db.transaction() as tx:
            host = await self._require(tx, host_id)
            # A draining host is cordoned already; cordon does not end its drain.
            if host["intent"] != HostIntent.DRAINING:
                await change_host_state(
                    tx,
                    host,
                    HostIntent.CORDONED,
                    "cordoned by an operator: no new notebooks",
                    now=self.clock(),
                )
        return await self.get(host_id)

    async def uncordon(self, host_id: str) -> wire.Host:
        async with self.db.transaction() as tx:
            host = await self._require(tx, host_id)
            await change_host_state(
                tx, host, HostIntent.OPEN, "uncordoned by an operator", now=self.clock()
            )
        return await self.get(host_id)

    async def drain(self, host_id: str) -> wire.Host:
        now = self.clock()
        async with self.db.transaction() as tx:
            host = await self._require(tx, host_id)
            rows = await tx.all(
                "SELECT * FROM notebooks WHERE host_id = ? AND state IN (?, ?)",
                (host_id, S.STARTING.value, S.RUNNING.value),
            )
            await change_host_state(
                tx,
                host,
                HostIntent.DRAINING,
                f"drained by an operator: {len(rows)} notebooks stopping",
                now=now,
            )
            for row in rows:
                await stop_by_scheduler(
                    tx,
                    row,
                    f"host {host_id} is being drained",
                    again="it will start again on another host",
                    now=now,
                    board=self.board,
                )
        return await self.get(host_id)

    async def end_drains(self, tx: Tx, *, now: float) -> None:
        """Draining hosts that no notebook holds any more have finished their drain: they stay
        cordoned. Lost ones too (their notebooks went to ERROR and left them)."""
        rows = await tx.all(
            f"SELECT {HOST_STATE_COLUMNS} FROM hosts WHERE intent = ? AND NOT EXISTS "
            "(SELECT 1 FROM notebooks n WHERE n.host_id = hosts.id)",
            (HostIntent.DRAINING,),
        )
        for host in rows:
            await change_host_state(
                tx, host, HostIntent.CORDONED, "drain finished: no notebook left on it", now=now
            )

    async def _require(self, tx: Tx, host_id: str) -> Row:
        host = await tx.one(f"SELECT {HOST_STATE_COLUMNS} FROM hosts WHERE id = ?", (host_id,))
        if host is None:
            raise not_found("host", host_id)
        return host

    async def get(self, host_id: str) -> wire.Host:
        for host in await self.list(host_id):
            return host
        raise not_found("host", host_id)

    async def list(self, only: str | None = None) -> list[wire.Host]:
        await self.flush()
        where, params = ("WHERE h.id = ?", (only,)) if only else ("", ())
        async with self.db.read() as tx:
            rows = await tx.all(
                "SELECT h.*, (SELECT COUNT(*) FROM notebooks n WHERE "
                f"COALESCE(n.host_id, n.last_host_id) = h.id AND n.state IN ({_ON_HOST_MARKS})"
                f") AS notebooks FROM hosts h {where} ORDER BY id",
                (*_ON_HOST, *params),
            )
            gpus = await tx.all(
                "SELECT * FROM gpus WHERE present = 1 "
                + ("AND host_id = ? " if only else "")
                + "ORDER BY host_id, idx",
                params,
            )
        by_host: dict[str, list[wire.HostGpu]] = {}
        for g in gpus:
            by_host.setdefault(g["host_id"], []).append(
                wire.HostGpu(
                    uuid=g["uuid"],
                    model=g["model"],
                    index=g["idx"],
                    memory_total_mb=g["memory_total_mb"],
                    memory_used_mb=g["memory_used_mb"],
                    utilization_pct=g["utilization_pct"],
                    notebook=g["notebook_id"],
                )
            )
        floor = DiskFloor.of(self.config)
        hosts = []
        for r in rows:
            state = _state(HostState(r["state"]), HostIntent(r["intent"]), r["notebooks"])
            disk = None
            if r["disk_free_bytes"] is not None and r["disk_total_bytes"] is not None:
                disk = wire.DiskSpace(r["disk_free_bytes"], r["disk_total_bytes"])
            models: dict[str, list[int]] = {}
            for g in by_host.get(r["id"], []):
                counts = models.setdefault(g.model, [0, 0])
                counts[0] += 1
                counts[1] += g.notebook is None and state == "ready"
            hosts.append(
                wire.Host(
                    id=r["id"],
                    state=state,
                    cpus=r["cpus"],
                    cpus_free=r["cpus"] - r["cpus_used"],
                    memory_mb=r["memory_mb"],
                    gpus=by_host.get(r["id"], []),
                    last_heartbeat=r["last_heartbeat"],
                    agent_url=r["agent_url"],
                    registered_at=r["registered_at"],
                    gpu_note=r["gpu_note"],
                    flavor=r["flavor"],
                    labels=json.loads(r["labels"]),
                    gpu_models=[
                        wire.HostGpuModel(model=m, total=t, free=f)
                        for m, (t, f) in sorted(models.items())
                    ],
                    notebooks=r["notebooks"],
                    disk=disk,
                    placement_blocked=floor.why(disk) if disk and floor.blocks(disk) else "",
                    ssh_address=r["ssh_address"],
                )
            )
        return hosts


def _state(state: HostState, intent: HostIntent, notebooks: int) -> str:
    """The one state the API shows (``wire.Host.state``): a drain whose notebooks have all
    left reads ``cordoned`` even before :meth:`HostService.end_drains` has recorded it."""
    if state == HostState.LOST:
        return "lost"
    if intent == HostIntent.DRAINING and notebooks:
        return "draining"
    if intent != HostIntent.OPEN:
        return "cordoned"
    return "ready"
