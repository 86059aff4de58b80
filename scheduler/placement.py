"""Where a notebook runs: which host, which GPUs.

:func:`resources_for` turns a request into resources (pure). :func:`find_host`,
:func:`reserve` and :func:`release` run inside the caller's write transaction, so the choice
and the reservation see the same data and are committed together with the notebook row;
``find_host(..., reserve_for=notebook)`` chooses and reserves in one statement (a placement
is on the hot path of every create: on PostgreSQL each statement is a round trip inside the
writers' serialized section).

Rules (docs/design.md, Placement):

* only hosts READY and OPEN (:mod:`common.states`: not lost, neither cordoned nor draining),
  heard from within the heartbeat TTL, of the requested flavor when one is asked for, and whose
  workspace disk is not nearly full (:class:`DiskFloor`; a host that never reported its disk is
  not held back);
* ``gpu = N > 0``: hosts with at least N unreserved GPUs; the notebook's last host first if it
  fits, else, with ``placement = "binpack"`` (the default), the host left with the fewest free
  GPUs, so whole hosts stay free for big requests; with ``"spread"``, the host with the most.
  Ties go to the lowest host id. The N lowest-index free GPUs are reserved;
* ``gpu = 0``: the same over CPUs: a host's CPUs minus those of the CPU notebooks on it.

Free GPUs and used CPUs are kept per host in ``hosts.gpus_free`` / ``hosts.cpus_used``, which
:func:`refresh_hosts` recomputes from ``gpus`` and ``notebooks`` for every host a transaction
touches, and which a reservation (``reserve_for``) adjusts at once, so the next placement of
the same transaction sees it before the recount; the database half therefore reads one row
per candidate host, not one per GPU, through the index ``hosts_placeable (state, intent,
gpus_free, id)``, then that host's free GPUs through ``gpus_free (host_id, idx)``, partial on
free GPUs (migration 0015).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common import wire
from common.config import SchedulerConfig
from common.errors import ApiError, invalid
from common.states import HostIntent, HostState
from scheduler.db import Row, Tx


@dataclass(frozen=True)
class Resources:
    gpu: int
    cpu: int
    memory_mb: int
    disk_gb: int = 0
    #: The flavor asked for (hosts must offer it) and the GPU model it stands for.
    flavor: str | None = None
    gpu_model: str = ""

    def describe(self) -> str:
        """What the notebook waits for, for people: ``2 × H100``, ``1 GPU``, ``4 CPUs``."""
        if self.gpu > 0:
            if self.gpu_model:
                return f"{self.gpu} × {self.gpu_model}"
            return f"{self.gpu} GPU{'s' if self.gpu != 1 else ''}"
        return f"{self.cpu} CPU{'s' if self.cpu != 1 else ''}"


@dataclass(frozen=True)
class Placement:
    host: str
    #: The GPUs' uuids, lowest index first.
    gpus: tuple[str, ...]
    #: The same as a notebook shows them, when :func:`find_host` reserved them.
    reserved: tuple[wire.GpuRef, ...] = ()


@dataclass(frozen=True)
class DiskFloor:
    """Free space a host's workspace filesystem must keep for the host to take new notebooks:
    the larger of ``min_free_pct`` of its size and ``min_free_gb``. A start restores a whole
    workspace there, and the notebooks already on it keep writing; a host below the floor
    takes none until space is freed, and requests queue or go elsewhere instead of failing.

    The rule is here twice, for SQL (:meth:`sql`) and for views (:meth:`blocks`); keep them
    alike."""

    min_free_pct: float = 0.0
    min_free_gb: float = 0.0

    @classmethod
    def of(cls, config: SchedulerConfig) -> DiskFloor:
        return cls(min_free_pct=config.min_free_disk_pct, min_free_gb=config.min_free_disk_gb)

    def min_free_bytes(self, total_bytes: int) -> float:
        return max(self.min_free_gb * 1e9, total_bytes * self.min_free_pct / 100)

    def blocks(self, disk: wire.DiskSpace | None) -> bool:
        return disk is not None and disk.free_bytes < self.min_free_bytes(disk.total_bytes)

    def sql(self) -> tuple[str, list[object]]:
        """A condition on ``hosts`` that holds where the disk does not block placement."""
        # At least the larger of the two is at least each of them. The casts keep a fraction
        # where PostgreSQL would take a parameter beside an integer column for an integer.
        return (
            "(disk_free_bytes IS NULL OR disk_total_bytes IS NULL OR "
            "(disk_free_bytes >= CAST(? AS DOUBLE PRECISION) AND "
            "disk_free_bytes >= disk_total_bytes * CAST(? AS DOUBLE PRECISION)))",
            [self.min_free_gb * 1e9, self.min_free_pct / 100],
        )

    def why(self, disk: wire.DiskSpace) -> str:
        """For operators: ``workspace disk nearly full (3.2 GB free of 500.0 GB; 25.0 GB must
        stay free)``."""
        return (
            f"workspace disk nearly full ({_gb(disk.free_bytes)} free of "
            f"{_gb(disk.total_bytes)}; {_gb(self.min_free_bytes(disk.total_bytes))} must stay "
            "free)"
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def resources_for(
    gpu: int | None, cpu: int | None, config: SchedulerConfig, flavor: str | None = None
) -> Resources:
    """Apply the request defaults: nothing asked → 1 GPU; ``gpu=0`` alone → 1 CPU; a GPU
    notebook's CPUs default to ``cpus_per_gpu`` per GPU (a limit, not a reservation). With a
    flavor, CPU, memory and disk are the flavor's per-unit shape times the units asked for."""
    if flavor is not None:
        return _flavored(gpu, cpu, config, flavor)
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


def _flavored(gpu: int | None, cpu: int | None, config: SchedulerConfig, flavor: str) -> Resources:
    spec = config.flavors.get(flavor)
    if spec is None:
        known = ", ".join(sorted(config.flavors)) or "none are configured"
        raise invalid(
            f"invalid request: unknown flavor {flavor!r} (known: {known}) - at `$.flavor`",
            field="$.flavor",
        )
    if spec.gpu_model:
        if cpu is not None:
            raise invalid(
                f"invalid request: flavor {flavor} sets the CPUs ({spec.cpu} per GPU); "
                "ask for GPUs only - at `$.cpu`",
                field="$.cpu",
            )
        units = 1 if gpu is None else gpu
        if units < 1:
            raise invalid(
                f"invalid request: flavor {flavor} is a GPU flavor; ask for at least 1 GPU "
                "- at `$.gpu`",
                field="$.gpu",
            )
        gpus = units
    else:
        if gpu:
            raise invalid(
                f"invalid request: flavor {flavor} is a CPU flavor; it has no GPUs - at `$.gpu`",
                field="$.gpu",
            )
        units = 1 if cpu is None else cpu
        if units < 1:
            raise invalid(
                f"invalid request: flavor {flavor} needs at least 1 CPU unit - at `$.cpu`",
                field="$.cpu",
            )
        gpus = 0
    return Resources(
        gpu=gpus,
        cpu=spec.cpu * units,
        memory_mb=spec.memory_mb * units,
        disk_gb=spec.disk_gb * units,
        flavor=flavor,
        gpu_model=spec.gpu_model,
    )


def _eligible(
    resources: Resources, *, now: float, fresh_within_s: float, disk_floor: DiskFloor
) -> tuple[str, list]:
    room, params = disk_floor.sql()
    where = f"state = ? AND intent = ? AND last_heartbeat >= ? AND {room}"
    params = [HostState.READY.value, HostIntent.OPEN.value, now - fresh_within_s, *params]
    if resources.flavor is not None:
        where += " AND flavor = ?"
        params.append(resources.flavor)
    return where, params


async def find_host(
    tx: Tx,
    resources: Resources,
    *,
    now: float,
    fresh_within_s: float,
    last_host: str | None = None,
    strategy: str = "binpack",
    disk_floor: DiskFloor,
    also: tuple[str, Sequence[object]] | None = None,
    reserve_for: str | None = None,
) -> Placement | None:
    """Where ``resources`` fit right now, by the rules above, or ``None``. ``also``: one more
    condition on the choice (SQL and its parameters), e.g. that nobody waits in the queue for
    the same kind (:func:`scheduler.queue.none_waiting`); ``None`` when it does not hold.

    With ``reserve_for`` (a notebook id), the GPUs are reserved for it by the statement that
    chooses them (:attr:`Placement.reserved`; nothing is reserved when the answer is
    ``None``): when there is room, a placement is one statement (two when the notebook's last
    host is tried first and does not fit)."""
    for host, params in _choices(
        resources,
        now=now,
        fresh_within_s=fresh_within_s,
        last_host=last_host,
        strategy=strategy,
        disk_floor=disk_floor,
        also=also,
    ):
        if resources.gpu == 0:
            if reserve_for is not None:
                # The host's used CPUs count the notebook from now on (its host_id, which
                # refresh_hosts counts, is written later), so a later placement of this
                # transaction sees them taken.
                host = (
                    f"UPDATE hosts SET cpus_used = cpus_used + ? WHERE id = ({host}) RETURNING id"
                )
                params = [resources.cpu, *params]
            row = await tx.one(host, params)
            if row is not None:
                return Placement(host=row["id"], gpus=())
            continue
        rows = await _take_gpus(tx, host, params, resources.gpu, reserve_for)
        if len(rows) == resources.gpu:
            reserved = (gpu_ref(r) for r in rows)
            return Placement(
                host=rows[0]["host_id"],
                gpus=tuple(r["uuid"] for r in rows),
                reserved=tuple(reserved) if reserve_for is not None else (),
            )
        if rows:
            stale = rows[0]["host_id"]
            if reserve_for is not None:
                await release(tx, reserve_for)
        else:  # no GPU: was there a host at all?
            chosen = await tx.one(host, params)
            stale = chosen["id"] if chosen is not None else None
        if stale is not None:
            # Fewer GPUs than its counters promised: they are out of date; refuse this host,
            # never overbook.
            await refresh_hosts(tx, {stale})
            return None
    return None


_GPU_COLUMNS = "host_id, uuid, idx, model, utilization_pct, memory_used_mb, memory_total_mb"


def gpu_ref(row: Row) -> wire.GpuRef:
    """A notebook's GPU as users see it, from a ``gpus`` row."""
    return wire.GpuRef(
        uuid=row["uuid"],
        model=row["model"],
        index=row["idx"],
        utilization_pct=row["utilization_pct"],
        memory_used_mb=row["memory_used_mb"],
        memory_total_mb=row["memory_total_mb"],
    )


async def _take_gpus(
    tx: Tx, host: str, params: Sequence[object], count: int, reserve_for: str | None
) -> list[Row]:
    """The ``count`` lowest-index free GPUs of the host ``host`` chooses (fewer if it has
    fewer), reserved for ``reserve_for`` unless that is ``None``; lowest index first. The host
    is a scalar subquery, so its id is an index condition on the GPUs even in a plan
    PostgreSQL made before it had statistics (a join was not, and read every free GPU)."""
    free = (
        f"SELECT uuid FROM gpus WHERE host_id = ({host}) AND notebook_id IS NULL "
        "AND present = 1 ORDER BY idx LIMIT ?"
    )
    if reserve_for is None:
        rows = await tx.all(
            f"SELECT {_GPU_COLUMNS} FROM gpus WHERE uuid IN ({free})",
            (*params, count),
        )
    else:
        # The host's free GPUs count the reservation at once, so a later placement of this
        # transaction (a batch, Admission.start_many) sees them taken: on PostgreSQL in the
        # same statement, on SQLite (no writes in WITH) in the next.
        take = (
            f"UPDATE gpus SET notebook_id = ? WHERE notebook_id IS NULL AND uuid IN ({free}) "
            f"RETURNING {_GPU_COLUMNS}"
        )
        if tx.dialect == "postgresql":
            take = (
                f"WITH taken AS ({take}), counted AS (UPDATE hosts SET gpus_free = gpus_free - "
                "(SELECT COUNT(*) FROM taken) WHERE id IN (SELECT host_id FROM taken)) "
                "SELECT * FROM taken"
            )
        rows = await tx.all(take, (reserve_for, *params, count))
        if rows and tx.dialect != "postgresql":
            await tx.run(
                "UPDATE hosts SET gpus_free = gpus_free - ? WHERE id = ?",
                (len(rows), rows[0]["host_id"]),
            )
    return sorted(rows, key=lambda r: r["idx"])


def _choices(
    resources: Resources,
    *,
    now: float,
    fresh_within_s: float,
    last_host: str | None,
    strategy: str,
    disk_floor: DiskFloor,
    also: tuple[str, Sequence[object]] | None,
) -> list[tuple[str, list[object]]]:
    """The hosts to try in turn, each a query of at most one host with room by its counters
    (the last host, then the best by the strategy), with its parameters."""
    where, params = _eligible(
        resources, now=now, fresh_within_s=fresh_within_s, disk_floor=disk_floor
    )
    if also is not None:
        where = f"{where} AND {also[0]}"
        params = [*params, *also[1]]
    free = "gpus_free" if resources.gpu > 0 else "cpus - cpus_used"
    wanted = resources.gpu if resources.gpu > 0 else resources.cpu
    order = f"{free} DESC, id" if strategy == "spread" else f"{free} ASC, id"
    host = f"SELECT id FROM hosts WHERE {free} >= ? AND"
    choices = [(f"{host} {where} ORDER BY {order} LIMIT 1", [wanted, *params])]
    if last_host is not None:
        choices.insert(0, (f"{host} id = ? AND {where} LIMIT 1", [wanted, last_host, *params]))
    return choices


async def never_fits(tx: Tx, resources: Resources) -> str | None:
    """Why no registered host could ever hold ``resources`` (even empty), or ``None``.

    Such a request is refused at once rather than queued forever. Lost and cordoned hosts
    count: they may come back."""
    total = "gpus_total" if resources.gpu > 0 else "cpus"
    if resources.flavor is not None:
        row = await tx.one(
            f"SELECT MAX({total}) AS most FROM hosts WHERE flavor = ?", (resources.flavor,)
        )
    else:
        row = await tx.one(f"SELECT MAX({total}) AS most FROM hosts")
    offer = f" of flavor {resources.flavor}" if resources.flavor else ""
    if row is None or row["most"] is None:
        return f"no host{offer} is registered"
    wanted = resources.gpu if resources.gpu > 0 else resources.cpu
    if row["most"] < wanted:
        unit = "GPUs" if resources.gpu > 0 else "CPUs"
        return f"no host{offer} has {wanted} {unit} (the largest has {row['most']})"
    return None


async def refresh_hosts(tx: Tx, host_ids: set[str | None], *, bump: bool = False) -> None:
    """Recompute the capacity counters of ``host_ids`` from the rows they summarize; with
    ``bump``, also bump their assignment versions (one statement for both)."""
    statement = refresh_statement(host_ids, bump=bump)
    if statement is not None:
        await tx.run(*statement)


def refresh_statement(
    host_ids: set[str | None], *, bump: bool = False
) -> tuple[str, list[str | None]] | None:
    """The statement of :func:`refresh_hosts` and its parameters (``None``: no host), for a
    caller that sends it with others (:meth:`scheduler.db.Tx.all_with`). It reads the hosts'
    GPUs and their CPU notebooks' host and CPUs."""
    ids: list[str | None] = sorted(h for h in host_ids if h)
    if not ids:
        return None
    # Padded with NULLs (which match no id) to a power of two: a few statement texts, each
    # prepared once, whatever the number of hosts a batch of placements touches.
    ids += [None] * ((1 << (len(ids) - 1).bit_length()) - len(ids))
    marks = ", ".join("?" for _ in ids)
    version = ", assignments_version = assignments_version + 1" if bump else ""
    return (
        "UPDATE hosts SET "
        "gpus_total = (SELECT COUNT(*) FROM gpus g WHERE g.host_id = hosts.id AND g.present = 1), "
        "gpus_free = (SELECT COUNT(*) FROM gpus g WHERE g.host_id = hosts.id "
        "  AND g.notebook_id IS NULL AND g.present = 1), "
        "cpus_used = COALESCE((SELECT SUM(n.cpu) FROM notebooks n "
        f"  WHERE n.host_id = hosts.id AND n.gpu = 0), 0){version} "
        f"WHERE id IN ({marks})",
        ids,
    )


async def reserve(tx: Tx, placement: Placement, notebook_id: str) -> None:
    """Mark the chosen GPUs as the notebook's (one statement); guarded so a GPU is never given
    twice."""
    if not placement.gpus:
        return
    marks = ", ".join("?" for _ in placement.gpus)
    changed = await tx.run(
        f"UPDATE gpus SET notebook_id = ? WHERE host_id = ? AND notebook_id IS NULL "
        f"AND uuid IN ({marks})",
        (notebook_id, placement.host, *placement.gpus),
    )
    if changed != len(placement.gpus):
        # The caller's transaction rolls back, so nothing of this attempt is stored.
        raise ApiError(
            "no_capacity",
            f"GPUs {', '.join(placement.gpus)} on host {placement.host} were taken; try again",
        )


async def release(tx: Tx, notebook_id: str) -> None:
    """Free the notebook's GPUs; ones its host no longer reports are forgotten instead."""
    await tx.run("DELETE FROM gpus WHERE notebook_id = ? AND present = 0", (notebook_id,))
    await tx.run("UPDATE gpus SET notebook_id = NULL WHERE notebook_id = ?", (notebook_id,))
