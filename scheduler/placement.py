"""Where a notebook runs: which host, which GPUs.

The decision is pure (:func:`choose_host`, :func:`pick_gpus`, :func:`resources_for`) so unit
tests cover it without a database; :func:`load_capacity` and :func:`reserve` are the database
halves and run inside the caller's write transaction, so the choice and the reservation see the
same data and are committed together with the notebook row.

Rules (docs/design.md, Placement):

* only hosts that are ``ready`` and heard from within ``heartbeat_interval_s * heartbeat_misses``;
* ``gpu = N > 0``: hosts with at least N unreserved GPUs; the notebook's last host first if it
  fits, else best fit (fewest free GPUs left over), ties by host id; the N lowest-index free GPUs
  are reserved;
* ``gpu = 0``: hosts whose CPUs minus the CPUs of the CPU notebooks holding resources there are
  at least ``cpu``, same preference order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import SchedulerConfig
from common.errors import ApiError, invalid
from scheduler.db import Tx


@dataclass(frozen=True)
class FreeGpu:
    uuid: str
    index: int


@dataclass(frozen=True)
class HostCapacity:
    """What one eligible host has free right now."""

    id: str
    cpus_free: int
    free_gpus: tuple[FreeGpu, ...] = field(default=())


@dataclass(frozen=True)
class Resources:
    gpu: int
    cpu: int
    memory_mb: int


@dataclass(frozen=True)
class Placement:
    host: str
    gpus: tuple[str, ...]


def resources_for(gpu: int | None, cpu: int | None, config: SchedulerConfig) -> Resources:
    """Apply the request defaults: nothing asked → 1 GPU; ``gpu=0`` alone → 1 CPU; a GPU
    notebook's CPUs default to ``cpus_per_gpu`` per GPU (a limit, not a reservation)."""
    if gpu is None and cpu is None:
        gpu = 1
    elif gpu is None:
        gpu = 0
    if gpu > 0:
        cpu = config.cpus_per_gpu * gpu if cpu is None else cpu
        if cpu < 1:
            raise invalid(
                "invalid request: a notebook needs at least 1 CPU - at `$.cpu`", field="$.cpu"
            )
        return Resources(gpu=gpu, cpu=cpu, memory_mb=config.memory_mb_per_gpu * gpu)
    cpu = 1 if cpu is None else cpu
    if cpu < 1:
        raise invalid(
            "invalid request: a CPU notebook (gpu=0) needs at least 1 CPU - at `$.cpu`",
            field="$.cpu",
        )
    return Resources(gpu=0, cpu=cpu, memory_mb=config.memory_mb_per_cpu * cpu)


def _free_amount(host: HostCapacity, gpu: int) -> int:
    return len(host.free_gpus) if gpu > 0 else host.cpus_free


def choose_host(
    hosts: list[HostCapacity], resources: Resources, *, last_host: str | None = None
) -> HostCapacity:
    """The host to use, or ``ApiError('no_capacity')`` naming the largest free amount seen."""
    wanted = resources.gpu if resources.gpu > 0 else resources.cpu
    unit = "GPU" if resources.gpu > 0 else "CPU"
    fitting = [h for h in hosts if _free_amount(h, resources.gpu) >= wanted]
    if not fitting:
        most = max((_free_amount(h, resources.gpu) for h in hosts), default=0)
        plural = "s" if wanted != 1 else ""
        why = f"most free on one host: {most}" if hosts else "no ready host"
        message = f"no host has {wanted} free {unit}{plural} ({why})"
        raise ApiError("no_capacity", message, requested=wanted, unit=unit, most_free=most)
    for host in fitting:
        if host.id == last_host:
            return host
    return min(fitting, key=lambda h: (_free_amount(h, resources.gpu) - wanted, h.id))


def pick_gpus(host: HostCapacity, count: int) -> tuple[str, ...]:
    """The ``count`` lowest-index free GPUs of ``host``."""
    ordered = sorted(host.free_gpus, key=lambda g: g.index)
    return tuple(g.uuid for g in ordered[:count])


def place(
    hosts: list[HostCapacity], resources: Resources, *, last_host: str | None = None
) -> Placement:
    host = choose_host(hosts, resources, last_host=last_host)
    return Placement(host=host.id, gpus=pick_gpus(host, resources.gpu))


# ---------------------------------------------------------------- database halves


async def load_capacity(tx: Tx, *, now: float, fresh_within_s: float) -> list[HostCapacity]:
    """Eligible hosts (ready, heard from recently) and what they have free."""
    hosts = await tx.all(
        "SELECT h.id, h.cpus - COALESCE(("
        "  SELECT SUM(n.cpu) FROM notebooks n WHERE n.host_id = h.id AND n.gpu = 0"
        "), 0) AS cpus_free "
        "FROM hosts h WHERE h.state = 'ready' AND h.last_heartbeat >= ? ORDER BY h.id",
        (now - fresh_within_s,),
    )
    if not hosts:
        return []
    free: dict[str, list[FreeGpu]] = {row["id"]: [] for row in hosts}
    for row in await tx.all(
        "SELECT uuid, host_id, idx FROM gpus WHERE notebook_id IS NULL AND present = 1 "
        "ORDER BY host_id, idx"
    ):
        if row["host_id"] in free:
            free[row["host_id"]].append(FreeGpu(uuid=row["uuid"], index=row["idx"]))
    return [
        HostCapacity(id=row["id"], cpus_free=row["cpus_free"], free_gpus=tuple(free[row["id"]]))
        for row in hosts
    ]


async def reserve(tx: Tx, placement: Placement, notebook_id: str) -> None:
    """Mark the chosen GPUs as the notebook's; guarded so a GPU is never given twice."""
    for uuid in placement.gpus:
        changed = await tx.run(
            "UPDATE gpus SET notebook_id = ? WHERE uuid = ? AND host_id = ? "
            "AND notebook_id IS NULL",
            (notebook_id, uuid, placement.host),
        )
        if changed != 1:
            # The caller's transaction rolls back, so nothing of this attempt is stored.
            raise ApiError(
                "no_capacity", f"GPU {uuid} on host {placement.host} was taken; try again"
            )


async def release(tx: Tx, notebook_id: str) -> None:
    """Free the notebook's GPUs; ones its host no longer reports are forgotten instead."""
    await tx.run("DELETE FROM gpus WHERE notebook_id = ? AND present = 0", (notebook_id,))
    await tx.run("UPDATE gpus SET notebook_id = NULL WHERE notebook_id = ?", (notebook_id,))
