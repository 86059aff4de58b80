"""The simulated fleet and users of scripts/bench-scheduler: what runs in its load processes.

Each timed phase is a job that one load-generator process runs on its slice of the work
(:func:`run_job`, called through a process pool): every process opens its connections first,
sleeps until the shared wall-clock ``start_at``, then sends as fast as the scheduler answers,
one request in flight per connection. Jobs return plain dicts (counts, wall-clock times,
latencies in ms) that the parent merges.

With several scheduler replicas (``ports``), user traffic goes to them in turn
(:class:`bench.scheduler_http.RoundRobin`) and each simulated host only ever talks to its own
(``SimHost.port``).

The simulated hosts and their bodies are in bench/scheduler_fleet.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bench.scheduler_fleet import (
    HEARTBEAT,
    NOTEBOOKS,
    REGISTER,
    SimHost,
    heartbeat_body,
    register_body,
)
from bench.scheduler_http import Client, Connection, client_for, signed_call

C = TypeVar("C", bound=Client)

#: Heartbeat bodies per host in the heartbeat phase, sent in turn.
BODIES = 4

# ---------------------------------------------------------------- job plumbing


def run_job(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Entry point in a load process: run one job to completion."""
    started_cpu = time.process_time()
    # On asyncio's own loop, deliberately: on uvloop this process spends less CPU, but on this
    # 2-core machine it wakes more often, and one SQLite scheduler got about 13% fewer
    # heartbeats through (4 paired runs; two PostgreSQL replicas got about 15% more). The
    # figures stay comparable with the ones measured before.
    result = asyncio.run(_JOBS[kind](**spec))
    result["loadgen_cpu_s"] = time.process_time() - started_cpu
    return result


def warm_up(seconds: float) -> int:
    """Holds a pool process busy for a moment, so N warm-ups reach N distinct processes (all
    imported and ready before anything is timed)."""
    time.sleep(seconds)
    return 1


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Round-robin slices, one per load process (each gets a share of every project and
    host); empty slices are dropped."""
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def shares(total: int, parts: int) -> list[int]:
    """``total`` connections spread over ``parts`` processes."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _open_all(clients: list[C]) -> list[C]:
    for start in range(0, len(clients), 100):
        await asyncio.gather(*(c.open() for c in clients[start : start + 100]))
    return clients


async def _open_users(ports: list[int], count: int) -> list[Client]:
    """``count`` user clients, each spreading its requests over every replica in turn."""
    return await _open_all([client_for(ports, k) for k in range(count)])


async def _open_per_host(hosts: Sequence[SimHost]) -> list[Connection]:
    """One connection per host, to the replica that host talks to."""
    return await _open_all([Connection("127.0.0.1", host.port) for host in hosts])


def _by_port(hosts: Sequence[SimHost]) -> dict[int, list[SimHost]]:
    groups: dict[int, list[SimHost]] = {}
    for host in hosts:
        groups.setdefault(host.port, []).append(host)
    return groups


def _close_all(connections: Sequence[Client]) -> None:
    for connection in connections:
        connection.close()


async def _drain(
    connections: Sequence[C],
    items: Sequence[Any],
    one: Callable[[C, Any], Awaitable[None]],
) -> None:
    """Every item through ``one``, one item in flight per connection."""
    cursor = iter(items)

    async def worker(connection: C) -> None:
        for item in cursor:
            await one(connection, item)

    await asyncio.gather(*(worker(c) for c in connections))


# ---------------------------------------------------------------- jobs


async def register_hosts(
    hosts: list[SimHost], gpus: int, cpus: int, memory_mb: int, concurrency: int
) -> dict[str, Any]:
    """Register every host with its own replica, ``concurrency`` requests in flight (shared
    among the replicas)."""
    statuses: Counter[int] = Counter()
    intervals: set[float] = set()
    groups = _by_port(hosts)
    shared = shares(concurrency, len(groups))
    connections = {
        port: await _open_all(
            [Connection("127.0.0.1", port) for _ in range(max(1, min(share, len(group))))]
        )
        for (port, group), share in zip(groups.items(), shared, strict=True)
    }

    async def one(connection: Connection, host: SimHost) -> None:
        body = register_body(host.id, gpus=gpus, cpus=cpus, memory_mb=memory_mb)
        status, reply = await signed_call(connection, host.secret, host.id, "POST", REGISTER, body)
        statuses[status] += 1
        if status == 200:
            intervals.add(json.loads(reply)["heartbeat_interval_s"])

    started = time.time()
    await asyncio.gather(*(_drain(connections[port], group, one) for port, group in groups.items()))
    finished = time.time()
    for opened in connections.values():
        _close_all(opened)
    return {
        "statuses": dict(statuses),
        "started": started,
        "finished": finished,
        "heartbeat_interval_s": max(intervals, default=0.0),
    }


async def submit_notebooks(
    ports: list[int],
    requests: list[tuple[str, bytes]],
    concurrency: int,
    start_at: float,
    placed_within_s: float,
) -> dict[str, Any]:
    """POST every ``(token, body)``; then poll the QUEUED ones until placed (STARTING) or
    ``placed_within_s`` has passed. ``placed_at`` holds the wall time each placement was seen."""
    connections = await _open_users(ports, min(concurrency, len(requests)) or 1)
    statuses: Counter[int] = Counter()
    states: Counter[str] = Counter()
    placed_at: list[float] = []
    placed: list[tuple[str, str]] = []
    queued: list[tuple[str, str]] = []
    errors: list[str] = []

    async def submit(connection: Client, request: tuple[str, bytes]) -> None:
        token, body = request
        headers = {"Authorization": f"Bearer {token}"}
        status, reply = await connection.request("POST", NOTEBOOKS, body, headers)
        now = time.time()
        statuses[status] += 1
        if status != 201:
            if len(errors) < 5:
                errors.append(f"HTTP {status}: {reply[:300].decode(errors='replace')}")
            return
        notebook = json.loads(reply)
        states[notebook["state"]] += 1
        if notebook["state"] == "STARTING":
            placed_at.append(now)
            placed.append((token, notebook["id"]))
        elif notebook["state"] == "QUEUED":
            queued.append((token, notebook["id"]))

    await _sleep_until(start_at)
    started = time.time()
    await _drain(connections, requests, submit)
    submitted = time.time()
    still_queued = await _poll_until_placed(
        connections, queued, placed_at, placed, deadline=submitted + placed_within_s
    )
    _close_all(connections)
    return {
        "statuses": dict(statuses),
        "states_at_submit": dict(states),
        "placed_at": placed_at,
        "placed": placed,
        "still_queued": still_queued,
        "started": started,
        "submitted": submitted,
        "errors": errors,
    }


async def _poll_until_placed(
    connections: Sequence[Client],
    queued: list[tuple[str, str]],
    placed_at: list[float],
    placed: list[tuple[str, str]],
    *,
    deadline: float,
) -> int:
    """GET each queued notebook until it leaves QUEUED; a notebook that goes anywhere but
    STARTING is not counted as placed. Returns how many were still QUEUED at the deadline."""
    waiting = list(queued)
    still: list[tuple[str, str]] = []

    async def check(connection: Client, item: tuple[str, str]) -> None:
        token, notebook_id = item
        headers = {"Authorization": f"Bearer {token}"}
        path = f"{NOTEBOOKS}/{notebook_id}"
        status, reply = await connection.request("GET", path, b"", headers)
        state = json.loads(reply).get("state") if status == 200 else None
        if state == "QUEUED":
            still.append(item)
        elif state == "STARTING":
            placed_at.append(time.time())
            placed.append(item)

    while waiting and time.time() < deadline:
        await _drain(connections, waiting, check)
        waiting, still = still, []
        if waiting:
            await asyncio.sleep(0.05)
    return len(waiting)


async def heartbeat_storm(
    hosts: list[SimHost], gpus: int, start_at: float, duration_s: float
) -> dict[str, Any]:
    """Every host sends heartbeats back to back on its own connection (to its own replica)
    for ``duration_s``; replies that arrive after the window are not counted."""
    connections = await _open_per_host(hosts)
    # Every GPU's memory and utilization change from one beat to the next, as a busy GPU's do
    # (a few bodies per host, built before the clock starts, taken in turn): the scheduler
    # writes what changed, and an idle fleet's unchanged figures would cost it less.
    bodies = [[heartbeat_body(h.id, gpus=gpus, seed=s) for s in range(BODIES)] for h in hosts]
    statuses: Counter[int] = Counter()
    end = start_at + duration_s

    async def agent(connection: Connection, host: SimHost, own: list[bytes]) -> None:
        beat = 0
        while time.time() < end:
            body = own[beat % BODIES]
            beat += 1
            status, _ = await signed_call(connection, host.secret, host.id, "POST", HEARTBEAT, body)
            if time.time() <= end:
                statuses[status] += 1

    await _sleep_until(start_at)
    agents = zip(connections, hosts, bodies, strict=True)
    await asyncio.gather(*(agent(c, h, b) for c, h, b in agents))
    _close_all(connections)
    return {"statuses": dict(statuses), "window_s": duration_s}


async def latency_get(
    ports: list[int],
    clients: int,
    targets: list[tuple[str, str]],
    start_at: float,
    duration_s: float,
) -> dict[str, Any]:
    """``clients`` closed-loop users, each GETting random notebooks of ``targets``
    (``(token, notebook id)``) for ``duration_s``."""

    def next_request(rng: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
        token, notebook_id = rng.choice(targets)
        return "GET", f"{NOTEBOOKS}/{notebook_id}", b"", {"Authorization": f"Bearer {token}"}

    return await _closed_loop(ports, clients, next_request, start_at, duration_s, 200)


async def latency_post(
    ports: list[int],
    clients: int,
    requests: list[tuple[str, bytes]],
    start_at: float,
    duration_s: float,
) -> dict[str, Any]:
    """``clients`` closed-loop users, each POSTing notebooks (``(token, body)`` picked at
    random) for ``duration_s``."""

    def next_request(rng: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
        token, body = rng.choice(requests)
        return "POST", NOTEBOOKS, body, {"Authorization": f"Bearer {token}"}

    return await _closed_loop(ports, clients, next_request, start_at, duration_s, 201)


async def _closed_loop(
    ports: list[int],
    clients: int,
    next_request: Callable[[random.Random], tuple[str, str, bytes, dict[str, str]]],
    start_at: float,
    duration_s: float,
    expected: int,
) -> dict[str, Any]:
    """Latency (ms) of every request that got ``expected`` and finished inside the window."""
    connections = await _open_users(ports, clients)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    end = start_at + duration_s

    async def client(connection: Client, seed: int) -> None:
        rng = random.Random(seed)
        while time.time() < end:
            method, path, body, headers = next_request(rng)
            sent = time.perf_counter()
            status, reply = await connection.request(method, path, body, headers)
            elapsed_ms = (time.perf_counter() - sent) * 1000.0
            if time.time() > end:
                break
            statuses[status] += 1
            if status == expected:
                latencies.append(elapsed_ms)
            elif len(errors) < 5:
                text = reply[:300].decode(errors="replace")
                errors.append(f"{method} {path}: HTTP {status}: {text}")

    await _sleep_until(start_at)
    await asyncio.gather(*(client(c, i) for i, c in enumerate(connections)))
    _close_all(connections)
    return {"statuses": dict(statuses), "latencies_ms": latencies, "errors": errors}


_JOBS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "register": register_hosts,
    "submit": submit_notebooks,
    "heartbeat": heartbeat_storm,
    "get": latency_get,
    "post": latency_post,
}
