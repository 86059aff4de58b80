"""The simulated fleet of scripts/bench-scheduler: hosts, their agent bodies, their idle traffic.

Simulated hosts speak the real agent protocol: ``POST /v1/agents/register`` and
``/v1/agents/heartbeat`` with :class:`common.wire` bodies, signed per request. Their GPUs have
stable fake UUIDs derived from the host id, so heartbeats name the GPUs the host registered.
Each host talks to one scheduler replica only (its ``port``: register, heartbeats, long-polls),
as a real agent stays with the scheduler URL that answered it last.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from bench.scheduler_http import Connection, HttpError, signed_call
from common import wire

GPU_MODEL = "NVIDIA H100 80GB HBM3"
GPU_MEMORY_MB = 81559
_GPU_NAMESPACE = uuid.UUID("6f1d3c1e-8a7b-4f43-9b0e-6a4c2d5e7f10")

REGISTER = "/v1/agents/register"
HEARTBEAT = "/v1/agents/heartbeat"
NOTEBOOKS = "/v1/notebooks"


@dataclass(frozen=True)
class SimHost:
    """One simulated agent: its host id, HMAC secret and the scheduler replica it talks to."""

    id: str
    secret: bytes
    port: int


def gpu_uuid(host_id: str, index: int) -> str:
    return f"GPU-{uuid.uuid5(_GPU_NAMESPACE, f'{host_id}/{index}')}"


def register_body(host_id: str, *, gpus: int, cpus: int, memory_mb: int) -> bytes:
    return wire.encode(
        wire.AgentRegister(
            cpus=cpus,
            memory_mb=memory_mb,
            gpus=[
                wire.GpuInfo(
                    uuid=gpu_uuid(host_id, i),
                    index=i,
                    model=GPU_MODEL,
                    memory_total_mb=GPU_MEMORY_MB,
                )
                for i in range(gpus)
            ],
            # Nothing listens there: the bench never asks the scheduler for logs.
            agent_url="http://127.0.0.1:9",
            version="bench",
            labels={"bench": "scheduler"},
        )
    )


def heartbeat_body(host_id: str, *, gpus: int, seed: int = 0) -> bytes:
    rng = random.Random(f"{host_id}/{seed}")
    return wire.encode(
        wire.Heartbeat(
            gpus=[
                wire.GpuInfo(
                    uuid=gpu_uuid(host_id, i),
                    index=i,
                    model=GPU_MODEL,
                    memory_total_mb=GPU_MEMORY_MB,
                    memory_used_mb=rng.randrange(0, GPU_MEMORY_MB),
                    utilization_pct=rng.randrange(0, 101),
                )
                for i in range(gpus)
            ]
        )
    )


class IdleFleet:
    """The fleet's normal background traffic, run in the parent between and during the timed
    phases: every host heartbeats once per ``interval_s`` (spread evenly), so hosts stay
    fresh for placement. Paused while the heartbeat phase measures. With ``long_poll`` every
    host also holds ``GET /v1/agents/assignments?since=V&wait=25`` open, as a real agent does,
    and asks again whenever it is answered (a placement on it wakes it)."""

    def __init__(
        self,
        hosts: list[SimHost],
        gpus: int,
        interval_s: float,
        *,
        long_poll: bool = False,
        senders: int = 16,
    ) -> None:
        self.hosts = hosts
        self.gpus = gpus
        self.interval_s = interval_s
        self.long_poll = long_poll
        self.senders = min(senders, len(hosts)) or 1
        self.running = asyncio.Event()
        self.heartbeats: Counter[int] = Counter()
        self.polls: Counter[int] = Counter()
        self.failures: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.running.set()
        bodies = [heartbeat_body(h.id, gpus=self.gpus, seed=1) for h in self.hosts]
        for k in range(self.senders):
            mine = list(zip(self.hosts[k :: self.senders], bodies[k :: self.senders], strict=True))
            self._tasks.append(asyncio.create_task(self._heartbeats(k, mine)))
        if self.long_poll:
            self._tasks.extend(asyncio.create_task(self._poll(h)) for h in self.hosts)

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _heartbeats(self, k: int, mine: list[tuple[SimHost, bytes]]) -> None:
        # One connection per replica this sender's hosts talk to.
        connections = {host.port: Connection("127.0.0.1", host.port) for host, _ in mine}
        gap = self.interval_s / max(len(self.hosts), 1)
        # Sender k sends hosts k, k+senders, ...: one host every `gap` seconds fleet-wide.
        await asyncio.sleep(gap * k)
        while True:
            for host, body in mine:
                await self.running.wait()
                started = time.monotonic()
                try:
                    status, _ = await signed_call(
                        connections[host.port], host.secret, host.id, "POST", HEARTBEAT, body
                    )
                    self.heartbeats[status] += 1
                except HttpError as exc:
                    self._failed(f"heartbeat host={host.id}: {exc}")
                await asyncio.sleep(max(0.0, gap * self.senders - (time.monotonic() - started)))

    async def _poll(self, host: SimHost) -> None:
        connection = Connection("127.0.0.1", host.port)
        since: int | None = None
        while True:
            path = "/v1/agents/assignments" + ("" if since is None else f"?since={since}&wait=25")
            try:
                status, reply = await signed_call(
                    connection, host.secret, host.id, "GET", path, b""
                )
            except HttpError as exc:
                self._failed(f"assignments host={host.id}: {exc}")
                await asyncio.sleep(1.0)
                continue
            self.polls[status] += 1
            if status == 200:
                since = json.loads(reply)["version"]
            else:
                await asyncio.sleep(1.0)

    def _failed(self, message: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(message)
