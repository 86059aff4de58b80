"""The operator API's bodies: projects, quotas, usage, tokens and hosts."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from common.wire.scalars import MAX_IDLE_TIMEOUT_S, LabelKey, LabelValue, Name, Role


class ProjectCreate(Struct, forbid_unknown_fields=True):
    name: Name


class Quota(Struct):
    """A project's limits. Only STARTING and RUNNING notebooks count against the first three."""

    gpus: int
    cpus: int
    notebooks: int
    gpus_per_notebook: int
    cpus_per_notebook: int
    #: Seconds without activity after which a RUNNING notebook is stopped; 0: never.
    idle_timeout_s: float = 0.0


class QuotaUpdate(Struct, forbid_unknown_fields=True):
    """``PATCH /v1/admin/projects/{p}/quota``: the limits to change; omitted ones stay."""

    gpus: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    cpus: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    notebooks: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    gpus_per_notebook: Annotated[int, Meta(ge=0, le=16)] | None = None
    cpus_per_notebook: Annotated[int, Meta(ge=0, le=256)] | None = None
    #: 0 turns idle stops off for the project (whatever the scheduler's default).
    idle_timeout_s: Annotated[float, Meta(ge=0, le=MAX_IDLE_TIMEOUT_S)] | None = None


class QuotaUse(Struct):
    gpus: int
    cpus: int
    notebooks: int


class Project(Struct):
    name: str
    created_at: float
    quota: Quota | None = None
    used: QuotaUse | None = None
    queued: int = 0


class UsageRow(Struct):
    """Usage of one group over the asked period.

    ``minutes`` are commenced minutes of RUNNING; ``gpu_minutes`` is per GPU model
    (minutes × GPUs); ``cpu_minutes`` counts CPU notebooks only (minutes × CPUs), since a GPU
    notebook's CPUs come with its GPUs. Storage is GB-hours of workspace snapshots; the
    billable part leaves out the free tier (first 10 GB for 30 days from creation).
    """

    group: str
    notebooks: int
    minutes: int
    gpu_minutes: dict[str, int]
    cpu_minutes: int
    storage_gb_hours: float
    billable_storage_gb_hours: float


class UsageReport(Struct):
    start: float
    end: float
    group_by: str
    items: list[UsageRow]
    total: UsageRow


class ProjectList(Struct):
    items: list[Project]


class TokenCreate(Struct, forbid_unknown_fields=True):
    project: Name
    role: Role = "operator"
    description: Annotated[str, Meta(max_length=200)] = ""
    #: The token reaches only notebooks carrying every one of these labels.
    label_selector: dict[LabelKey, LabelValue] = {}


class ProjectTokenCreate(Struct, forbid_unknown_fields=True):
    """``POST /v1/tokens`` (operator token): a token of the caller's own project."""

    role: Role = "read"
    description: Annotated[str, Meta(max_length=200)] = ""
    label_selector: dict[LabelKey, LabelValue] = {}


class TokenInfo(Struct):
    """A token as listed (never the secret itself)."""

    id: str
    project: str
    role: Role
    description: str
    label_selector: dict[str, str]
    created_at: float


class TokenList(Struct):
    items: list[TokenInfo]


class TokenCreated(Struct):
    id: str
    project: str
    role: Role
    #: Shown once; the scheduler keeps only its digest.
    token: str
    label_selector: dict[str, str] = {}


class HostGpu(Struct):
    uuid: str
    model: str
    index: int
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int
    notebook: str | None = None


class HostGpuModel(Struct):
    model: str
    total: int
    free: int


class DiskSpace(Struct):
    """A filesystem's size. ``free_bytes`` is what unprivileged users may still write (the
    notebooks run as such), so it leaves out the blocks reserved for root."""

    free_bytes: Annotated[int, Meta(ge=0)]
    total_bytes: Annotated[int, Meta(ge=0)]


class Host(Struct):
    id: str
    #: ``ready``; ``cordoned`` (no new placements); ``draining`` (cordoned, notebooks still
    #: leaving); ``lost`` (missed its heartbeat TTL).
    state: Literal["ready", "cordoned", "draining", "lost"]
    cpus: int
    cpus_free: int
    memory_mb: int
    gpus: list[HostGpu]
    last_heartbeat: float
    agent_url: str
    registered_at: float
    #: Why the host reports no GPUs, when it reports none (e.g. "NVML: driver not loaded").
    gpu_note: str = ""
    flavor: str = ""
    labels: dict[str, str] = {}
    #: GPUs per model, total and free (free counts only on a ready host).
    gpu_models: list[HostGpuModel] = []
    #: Notebooks holding resources or work on the host (STARTING to DELETING).
    notebooks: int = 0
    #: The filesystem holding the host's workspaces, as its last heartbeat reported it.
    disk: DiskSpace | None = None
    #: Why no new notebooks are placed here although the host may be ready (its workspace
    #: disk is nearly full); empty when nothing but its state stops them.
    placement_blocked: str = ""
    #: ``host:port`` of the agent's SSH server into its notebooks; "" when it has none.
    ssh_address: str = ""


class HostList(Struct):
    items: list[Host]


class Route(Struct):
    """``GET /v1/router/notebooks/{id}`` (the router token): where ``nbfleet-router`` sends a
    request for the notebook's stable URL. ``agent_url`` is set while the notebook is RUNNING
    (the agent of its host); otherwise the router lets a scheduler answer with the notebook's
    state."""

    notebook: str
    state: str | None
    agent_url: str | None = None
