"""The agent protocol's service side: register, heartbeat, assignments, transitions, usage.

The host id always comes from the verified signature, never from a body. An agent may only
report on notebooks assigned to it (current host, or last host while DELETING); anything else is
answered ``stale`` and dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import msgspec

from common import wire
from common.config import SchedulerConfig
from common.notebook_urls import BASE_URL_PLACEHOLDER, editor_base_url, editor_path
from common.states import ON_HOST, HostIntent, HostState, InvalidTransition, NotebookState
from scheduler.access import ProxyActivity
from scheduler.board import AssignmentBoard
from scheduler.datastores import resolve_volumes
from scheduler.db import Database, Row, Tx
from scheduler.host_states import HOST_STATE_COLUMNS, change_host_state
from scheduler.hosts import HostService
from scheduler.lifecycle import RELEASING, add_usage, assigned_desired, change_state
from scheduler.placement import refresh_hosts
from scheduler.snapshots import restore_source
from scheduler.ssh_keys import assigned_keys

log = logging.getLogger(__name__)

S = NotebookState

#: Only the scheduler puts a notebook into these states (user start / delete).
_SCHEDULER_ONLY = frozenset({S.STARTING, S.DELETING})

#: Longest long-poll an agent may ask for.
MAX_WAIT_S = 30.0
DEFAULT_WAIT_S = 25.0


def fill(template: str, *, token: str, port: int, base_url: str) -> str:
    """Fill the per-notebook placeholders; other braces are left alone."""
    return (
        template.replace("{token}", token)
        .replace("{port}", str(port))
        .replace(BASE_URL_PLACEHOLDER, base_url)
    )


class AgentService:
    def __init__(
        self,
        db: Database,
        config: SchedulerConfig,
        board: AssignmentBoard,
        clock: Callable[[], float],
        hosts: HostService,
        on_capacity_freed: Callable[[], None] = lambda: None,
        activity: ProxyActivity | None = None,
        ssh_host_key: str = "",
    ) -> None:
        self.db = db
        self.config = config
        self.board = board
        self.clock = clock
        self.host_service = hosts
        #: Called after a report freed resources or a host (re)joined: the queue may move.
        self.on_capacity_freed = on_capacity_freed
        self.activity = activity or ProxyActivity(db)
        #: The fleet's SSH host key (OpenSSH private key), handed to every agent that registers.
        self.ssh_host_key = ssh_host_key

    # ------------------------------------------------------------ inventory

    async def register(self, host_id: str, request: wire.AgentRegister) -> wire.RegisterReply:
        """Create or refresh the host and its GPUs; idempotent. A new host starts READY and OPEN;
        a known one becomes READY (it may have been lost) and keeps its intent. Reservations are
        kept, and a reserved GPU that disappeared stays (marked absent) until its notebook
        releases it."""
        now = self.clock()
        why = "its agent registered"
        reported = [gpu.uuid for gpu in request.gpus]
        gone = f"uuid NOT IN ({', '.join('?' for _ in reported)})" if reported else "TRUE"
        async with self.db.transaction() as tx:
            # On PostgreSQL each statement is a round trip: the upsert also says how many of
            # the host's GPUs it no longer reports (usually none), and the GPUs go in one batch.
            [host] = await tx.all(
                "INSERT INTO hosts (id, agent_url, cpus, memory_mb, nvidia_runtime, "
                "last_heartbeat, registered_at, gpu_note, agent_version, flavor, labels, "
                "ssh_address, state, intent, state_at, state_reason, images) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET agent_url = excluded.agent_url, "
                "cpus = excluded.cpus, memory_mb = excluded.memory_mb, "
                "nvidia_runtime = excluded.nvidia_runtime, "
                "last_heartbeat = excluded.last_heartbeat, gpu_note = excluded.gpu_note, "
                "agent_version = excluded.agent_version, flavor = excluded.flavor, "
                "labels = excluded.labels, ssh_address = excluded.ssh_address, "
                "images = excluded.images "
                f"RETURNING {HOST_STATE_COLUMNS}, "
                f"(SELECT COUNT(*) FROM gpus WHERE gpus.host_id = hosts.id AND {gone}) AS gone",
                (
                    host_id,
                    request.agent_url,
                    request.cpus,
                    request.memory_mb,
                    int(request.nvidia_runtime),
                    now,
                    now,
                    request.gpu_note,
                    request.version,
                    request.flavor,
                    json.dumps(request.labels),
                    request.ssh_address,
                    HostState.READY,
                    HostIntent.OPEN,
                    now,
                    why,
                    msgspec.json.encode(request.images).decode(),
                    *reported,
                ),
            )
            await change_host_state(tx, host, HostState.READY, why, now=now)
            await tx.run_many(
                "INSERT INTO gpus (uuid, host_id, idx, model, memory_total_mb, "
                "memory_used_mb, utilization_pct, present) VALUES (?, ?, ?, ?, ?, ?, ?, 1) "
                "ON CONFLICT (uuid) DO UPDATE SET host_id = excluded.host_id, "
                "idx = excluded.idx, model = excluded.model, "
                "memory_total_mb = excluded.memory_total_mb, "
                "memory_used_mb = excluded.memory_used_mb, "
                "utilization_pct = excluded.utilization_pct, present = 1",
                (
                    (
                        gpu.uuid,
                        host_id,
                        gpu.index,
                        gpu.model,
                        gpu.memory_total_mb,
                        gpu.memory_used_mb,
                        gpu.utilization_pct,
                    )
                    for gpu in request.gpus
                ),
            )
            if host["gone"]:
                await tx.run(
                    f"DELETE FROM gpus WHERE host_id = ? AND notebook_id IS NULL AND {gone}",
                    (host_id, *reported),
                )
                await tx.run(
                    f"UPDATE gpus SET present = 0 WHERE host_id = ? AND {gone}",
                    (host_id, *reported),
                )
            await refresh_hosts(tx, {host_id})
        self.host_service.registered(host_id)
        self.on_capacity_freed()
        log.info(
            "host=%s registered: %d CPUs, %d GPUs, agent %s at %s, SSH %s",
            host_id,
            request.cpus,
            len(request.gpus),
            request.version,
            request.agent_url,
            request.ssh_address or "off",
        )
        return wire.RegisterReply(
            host=host_id,
            heartbeat_interval_s=self.host_service.interval_s,
            ssh_host_key=self.ssh_host_key,
        )

    async def heartbeat(self, host_id: str, request: wire.Heartbeat) -> wire.HeartbeatReply:
        """Held in memory, GPU metrics by the host service and editor proxy activity by
        :class:`ProxyActivity`; both are written in batches, never per heartbeat."""
        reply = await self.host_service.heartbeat(host_id, request)
        if reply.known and request.activity:
            self.activity.record(host_id, request.activity)
        return reply

    # ------------------------------------------------------------ assignments

    async def assignments(self, host_id: str) -> wire.Assignments:
        async with self.db.read() as tx:
            return await _assignments(tx, host_id, self.config)

    async def wait_assignments(
        self, host_id: str, *, since: int | None, wait_s: float
    ) -> wire.Assignments:
        """Answer at once if the version differs from ``since``; else wait up to ``wait_s``
        for a change and answer with the current list either way."""
        event = self.board.waiter(host_id)
        current = await self.assignments(host_id)
        if since is None or current.version != since or wait_s <= 0:
            return current
        if await self.board.wait(event, min(wait_s, MAX_WAIT_S)):
            return await self.assignments(host_id)
        return current

    # ------------------------------------------------------------ reports

    async def apply_transitions(
        self, host_id: str, items: list[wire.Transition]
    ) -> list[wire.TransitionResult]:
        now = self.clock()
        results = []
        async with self.db.transaction() as tx:
            for item in items:
                results.append(await self._apply_one(tx, host_id, item, now))
        if any(r.outcome == "applied" and r.state in RELEASING for r in results):
            self.on_capacity_freed()
        for result in results:
            if result.outcome in ("stale", "refused"):
                log.info(
                    "notebook=%s host=%s report %s: %s",
                    result.notebook,
                    host_id,
                    result.outcome,
                    result.message,
                )
        return results

    async def _apply_one(
        self, tx: Tx, host_id: str, item: wire.Transition, now: float
    ) -> wire.TransitionResult:
        row = await tx.one("SELECT * FROM notebooks WHERE id = ?", (item.notebook,))
        if row is None:
            return wire.TransitionResult(item.notebook, "stale", None, "unknown notebook")
        current = S(row["state"])
        if _assigned_host(row) != host_id:
            return wire.TransitionResult(
                item.notebook, "stale", current, f"notebook is not assigned to host {host_id}"
            )
        if item.generation != row["generation"]:
            return wire.TransitionResult(
                item.notebook,
                "stale",
                current,
                f"generation {item.generation} is not the current one ({row['generation']})",
            )
        if item.state in _SCHEDULER_ONLY and item.state != current:
            return wire.TransitionResult(
                item.notebook, "refused", current, f"only the scheduler sets {item.state}"
            )
        try:
            changed = await change_state(
                tx,
                row,
                item.state,
                item.reason,
                now=now,
                board=self.board,
                # A report that waited out a scheduler outage bills up to when it happened.
                billed_until=min(now, item.at),
                phases=item.phases,
            )
        except InvalidTransition as exc:
            return wire.TransitionResult(item.notebook, "refused", current, str(exc))
        if changed is not None:
            log.info(
                "notebook=%s host=%s %s → %s: %s",
                row["id"],
                host_id,
                current,
                item.state,
                item.reason,
            )
        outcome = "applied" if changed is not None else "repeat"
        return wire.TransitionResult(item.notebook, outcome, item.state)

    async def record_usage(self, host_id: str, items: list[wire.UsageItem]) -> None:
        async with self.db.transaction() as tx:
            for item in items:
                row = await tx.one("SELECT * FROM notebooks WHERE id = ?", (item.notebook,))
                if row is None or _assigned_host(row) != host_id or row["state"] not in ON_HOST:
                    log.info(
                        "notebook=%s host=%s usage for a notebook this host does not run; dropped",
                        item.notebook,
                        host_id,
                    )
                    continue
                if item.generation > row["generation"]:
                    continue
                await add_usage(tx, item.notebook, item.generation, item.billed_minutes)


def _assigned_host(row: Row) -> str | None:
    return row["host_id"] or row["last_host_id"]


async def _assignments(tx: Tx, host_id: str, config: SchedulerConfig) -> wire.Assignments:
    host = await tx.one("SELECT assignments_version FROM hosts WHERE id = ?", (host_id,))
    if host is None:
        return wire.Assignments(version=0, items=[])
    marks = ", ".join("?" for _ in ON_HOST)
    rows = await tx.all(
        f"SELECT * FROM notebooks WHERE COALESCE(host_id, last_host_id) = ? "
        f"AND state IN ({marks}) ORDER BY created_at, rowid",
        (host_id, *sorted(ON_HOST)),
    )
    items = []
    for row in rows:
        editor = config.catalog.editors.get(row["editor"])
        gpus = await tx.all(
            "SELECT uuid FROM gpus WHERE notebook_id = ? ORDER BY idx", (row["id"],)
        )
        token, port = row["access_token"], row["editor_port"]
        path = editor_path(row["id"])
        env = dict(json.loads(row["envvars"]))
        env["NBFLEET_NOTEBOOK_ID"] = row["id"]
        items.append(
            wire.Assignment(
                notebook=row["id"],
                project=row["project"],
                generation=row["generation"],
                desired=assigned_desired(row["desired"]),
                state=S(row["state"]),
                image=row["image"],
                command=[
                    fill(part, token=token, port=port, base_url=path)
                    for part in json.loads(row["command"])
                ],
                editor_port=port,
                url_path=fill(row["url_path"], token=token, port=port, base_url=path),
                gpus=[g["uuid"] for g in gpus],
                cpu=row["cpu"],
                memory_mb=row["memory_mb"],
                env=env,
                initialized=bool(row["initialized"]),
                access_token=token,
                running_since=row["running_since"],
                user=row["user"],
                unsecure_http=bool(row["unsecure_http"]),
                base_url=editor_base_url(row["id"], row["command"], row["url_path"]),
                volumes=await resolve_volumes(tx, row),
                restore_from=await restore_source(tx, row),
                ssh_public_keys=assigned_keys(row),
                editor=row["editor"],
                activity_api=editor.activity_api if editor is not None else "",
                gpu_busy_pct=config.idle.gpu_busy_pct,
                cpu_busy_pct=config.idle.cpu_busy_pct,
                labels=json.loads(row["labels"]),
            )
        )
    return wire.Assignments(version=host["assignments_version"], items=items)
