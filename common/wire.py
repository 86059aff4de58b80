"""Every body that crosses HTTP, as msgspec Structs with constraints, and one decoder per type.

Requests are decoded with :func:`decode`, which turns a msgspec validation error into
``ApiError('invalid_request')`` whose message names the offending field (msgspec reports it as
``$.field``). Responses are encoded with :func:`encode`.

Three groups: the user API (notebooks, catalog), the operator API (projects, tokens, hosts) and
the agent protocol (register, heartbeat, assignments, transitions, usage).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from common import ssh
from common.errors import ApiError
from common.states import NotebookState

# ---------------------------------------------------------------- constrained scalars

#: Label keys and values follow Kubernetes' rules closely enough for selectors to be unambiguous.
LabelKey = Annotated[str, Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?\Z")]
LabelValue = Annotated[str, Meta(pattern=r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?\Z")]
#: ``\Z``, not ``$`` (which also matches before a final newline). A NUL byte cannot be passed
#: to a process (environment or argument), so it is refused at the door, naming the field.
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")]
EnvValue = Annotated[str, Meta(max_length=4096, pattern=r"^[^\x00]*\Z")]
#: One argument of a command run in a container.
Argument = Annotated[str, Meta(pattern=r"^[^\x00]*\Z")]
Name = Annotated[str, Meta(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")]
CatalogKey = Annotated[str, Meta(min_length=1, max_length=64)]
HostId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})\Z")]
#: A request for more than this is a typo, not a wish; per-project quotas sit well below.
GpuCount = Annotated[int, Meta(ge=0, le=16)]
CpuCount = Annotated[int, Meta(ge=0, le=256)]
Role = Literal["read", "operator"]
#: One OpenSSH public key line, ``<type> <base64> [comment]`` (see :mod:`common.ssh`). The
#: pattern checks its shape; the scheduler also decodes the base64 and checks the key inside
#: (:func:`common.ssh.parse_public_key`), naming the same field.
SshPublicKey = Annotated[str, Meta(max_length=ssh.MAX_KEY_LENGTH, pattern=ssh.KEY_PATTERN)]
SshPublicKeys = Annotated[list[SshPublicKey], Meta(max_length=ssh.MAX_KEYS)]
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]{0,252}[A-Za-z0-9])?)"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: ``host:port`` (a name, an IPv4 address or a bracketed IPv6 one, ``[fd00::7]:22``, and a
#: port 1-65535), or "" for none.
HostPort = Annotated[str, Meta(max_length=262, pattern=rf"^({_HOST}:{_PORT})?\Z")]
Desired = Literal["running", "stopped", "deleted"]


# ---------------------------------------------------------------- user API

#: S3 bucket names (3-63 chars, lower case, digits, dots, hyphens).
BucketName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")]
#: A prefix inside a bucket: relative, no ``..`` segment, no leading slash.
ObjectPrefix = Annotated[str, Meta(pattern=r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\x00]{0,512}\Z")]
#: An absolute path inside the container, outside the system directories.
MountPath = Annotated[str, Meta(pattern=r"^(?!.*/\.{1,2}(/|$))(?!.*//)/[A-Za-z0-9._/-]{1,255}\Z")]
Permission = Literal["ro", "rw", "rwd"]


class Volume(Struct, forbid_unknown_fields=True):
    """A data volume: ``container@alias[/prefix]:/mount/path[:ro|rw|rwd]`` on the CLI.

    ``ro`` is pulled at STARTING and never pushed; ``rw`` also pushes additions and changes at
    STOPPING but never deletes remote objects; ``rwd`` also propagates deletions.
    """

    container: BucketName
    alias: Name
    mount_path: MountPath
    prefix: ObjectPrefix = ""
    permission: Permission = "ro"


class RestoreSource(Struct):
    notebook: str
    snapshot: str


class SnapshotInfo(Struct):
    """One workspace snapshot (a backup a notebook can be restored or forked from)."""

    id: str
    created_at: float
    kind: Literal["checkpoint", "stop", "fork", "manual"]
    files: int
    #: Bytes of the files as the user sees them.
    logical_bytes: int
    #: Bytes in object storage this snapshot references (compressed, deduplicated).
    stored_bytes: int


class SnapshotList(Struct):
    items: list[SnapshotInfo]


class Progress(Struct):
    """How far a sync has got, for the user watching a STARTING or STOPPING notebook."""

    phase: Literal["image", "restore", "volumes-pull", "push", "volumes-push", "checkpoint"]
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    at: float
    detail: str = ""


class NotebookCreate(Struct, forbid_unknown_fields=True):
    """``POST /v1/notebooks``. Neither ``gpu`` nor ``cpu`` given means 1 GPU."""

    framework: CatalogKey
    editor: CatalogKey
    gpu: GpuCount | None = None
    cpu: CpuCount | None = None
    name: Name | None = None
    labels: dict[LabelKey, LabelValue] = {}
    envvars: dict[EnvName, EnvValue] = {}
    volumes: list[Volume] = []
    #: A catalog flavor (``h100-1-gpu``, ``ai1-1-cpu``): picks the GPU model and scales CPU,
    #: memory and disk with the number of GPUs (or CPU units) requested.
    flavor: CatalogKey | None = None
    #: After the runtime limit (or a lost host), start again under the same id and workspace.
    restart_on_timeout: bool = False
    #: The editor is public: the proxy lets anyone in without a token.
    unsecure_http: bool = False
    #: Keys that may log in with SSH while the notebook runs (``ssh://<id>@host:port``).
    #: Never returned by the API, which shows their fingerprints (``Notebook.ssh_keys``).
    ssh_public_keys: SshPublicKeys = []


class SshKeysUpdate(Struct, forbid_unknown_fields=True):
    """``PUT /v1/notebooks/{id}/ssh-keys`` (operator): replaces the notebook's SSH keys; only
    while it is STOPPED, FAILED or ERROR (a running notebook keeps the keys it started with).
    An empty list removes them all."""

    keys: SshPublicKeys


class SshKeyInfo(Struct):
    """A notebook's SSH key as the API shows it: never the key itself."""

    #: ``ssh-ed25519``, ``ecdsa-sha2-nistp256``, ...
    type: str
    #: OpenSSH's form, as ``ssh-keygen -l`` prints it: ``SHA256:<base64, no padding>``.
    fingerprint: str
    comment: str = ""


class NotebookFork(Struct, forbid_unknown_fields=True):
    """``POST /v1/notebooks/{id}/fork``: a new notebook whose workspace starts from one of the
    source notebook's snapshots. Resources default to the source's."""

    backup: Annotated[str, Meta(min_length=1, max_length=128)]
    name: Name | None = None
    gpu: GpuCount | None = None
    cpu: CpuCount | None = None
    labels: dict[LabelKey, LabelValue] | None = None
    #: The fork's SSH keys: the source's are not copied (a fork may be for someone else).
    ssh_public_keys: SshPublicKeys = []


class GpuRef(Struct):
    uuid: str
    model: str
    index: int


class StateChange(Struct):
    state: NotebookState
    reason: str
    at: float
    generation: int


class QueueInfo(Struct):
    """Why and where a QUEUED notebook waits."""

    #: 1 is the next to be placed, counting every project's queued notebooks in fair order.
    position: int
    #: What it waits for, for people: ``"2 × H100"``, ``"4 CPUs"``.
    waiting_for: str
    queued_at: float
    #: What holds it: ``capacity`` (no host has room) or ``quota`` (its project is at a limit).
    blocked_by: Literal["capacity", "quota"] = "capacity"


class Notebook(Struct):
    id: str
    project: str
    name: str
    framework: str
    editor: str
    image: str
    state: NotebookState
    state_reason: str
    state_at: float
    gpu: int
    cpu: int
    memory_mb: int
    labels: dict[str, str]
    envvars: dict[str, str]
    created_at: float
    generation: int
    host: str | None = None
    gpus: list[GpuRef] = []
    url: str | None = None
    #: Set while a notebook is RUNNING: when the current billed run began.
    running_since: float | None = None
    billed_minutes: int = 0
    history: list[StateChange] | None = None
    volumes: list[Volume] = []
    #: The latest snapshot of the workspace (sizes for storage billing).
    workspace: SnapshotInfo | None = None
    #: Set while a sync runs (STARTING, STOPPING, checkpoints).
    progress: Progress | None = None
    #: ``(notebook, snapshot)`` this notebook was forked from.
    forked_from: RestoreSource | None = None
    flavor: str | None = None
    restart_on_timeout: bool = False
    disk_gb: int = 0
    #: Set while QUEUED.
    queue: QueueInfo | None = None
    unsecure_http: bool = False
    #: Last request through the editor proxy, and bytes it carried (both directions), as the
    #: agent last reported them.
    last_activity_at: float | None = None
    proxied_bytes: int = 0
    #: Disk the workspace takes on its host (allocated blocks of its host dir), as the agent
    #: last measured it (every minute or so) and when; ``None`` when it holds no host.
    workspace_used_bytes: int | None = None
    workspace_used_at: float | None = None
    #: The keys that may log in with SSH (fingerprints only).
    ssh_keys: list[SshKeyInfo] = []
    #: ``ssh://<id>@<host>:<port>`` while RUNNING, with keys, on a host that offers SSH;
    #: ``None`` otherwise.
    ssh: str | None = None


class NotebookList(Struct):
    items: list[Notebook]


class CatalogFramework(Struct):
    name: str
    image: str
    editors: list[str]
    description: str = ""


class CatalogEditor(Struct):
    name: str
    port: int
    description: str = ""


class CatalogFlavor(Struct):
    """Per unit: one GPU of ``gpu_model`` (empty for a CPU flavor, whose unit is one CPU)."""

    name: str
    gpu_model: str
    cpu: int
    memory_mb: int
    disk_gb: int
    description: str = ""


class Catalog(Struct):
    frameworks: list[CatalogFramework]
    editors: list[CatalogEditor]
    flavors: list[CatalogFlavor] = []


class ErrorBody(Struct):
    code: str
    message: str
    detail: dict[str, Any] = {}


class Health(Struct):
    status: str
    version: str


class DatastoreCreate(Struct, forbid_unknown_fields=True):
    """``POST /v1/datastores``: an S3 endpoint and credentials registered under an alias for
    the caller's project. Credentials are never returned by the API."""

    alias: Name
    endpoint: Annotated[str, Meta(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=512)]
    access_key: Annotated[str, Meta(min_length=1, max_length=256)]
    secret_key: Annotated[str, Meta(min_length=1, max_length=256)]
    region: Annotated[str, Meta(min_length=1, max_length=64)] = "us-east-1"


class Datastore(Struct):
    alias: str
    endpoint: str
    region: str
    created_at: float


class DatastoreList(Struct):
    items: list[Datastore]


# ---------------------------------------------------------------- operator API


class ProjectCreate(Struct, forbid_unknown_fields=True):
    name: Name


class Quota(Struct):
    """A project's limits. Only STARTING and RUNNING notebooks count against the first three."""

    gpus: int
    cpus: int
    notebooks: int
    gpus_per_notebook: int
    cpus_per_notebook: int


class QuotaUpdate(Struct, forbid_unknown_fields=True):
    """``PATCH /v1/admin/projects/{p}/quota``: the limits to change; omitted ones stay."""

    gpus: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    cpus: Annotated[int, Meta(ge=0, le=1_000_000)] | None = None
    notebooks: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    gpus_per_notebook: Annotated[int, Meta(ge=0, le=16)] | None = None
    cpus_per_notebook: Annotated[int, Meta(ge=0, le=256)] | None = None


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


# ---------------------------------------------------------------- agent protocol


class GpuInfo(Struct):
    """One GPU as NVML reports it."""

    uuid: Annotated[str, Meta(min_length=1, max_length=96)]
    index: Annotated[int, Meta(ge=0)]
    model: str
    memory_total_mb: Annotated[int, Meta(ge=0)]
    memory_used_mb: Annotated[int, Meta(ge=0)] = 0
    utilization_pct: Annotated[int, Meta(ge=0, le=100)] = 0


class AgentRegister(Struct, forbid_unknown_fields=True):
    """``POST /v1/agents/register``: sent at start and whenever the scheduler forgets the host."""

    cpus: Annotated[int, Meta(ge=1)]
    memory_mb: Annotated[int, Meta(ge=1)]
    gpus: list[GpuInfo]
    #: Base URL where the scheduler reaches this agent (logs; later the editor proxy).
    agent_url: str
    version: str
    nvidia_runtime: bool = False
    #: Why the inventory has no GPUs, when it has none (e.g. "NVML: driver not loaded").
    gpu_note: str = ""
    #: The catalog flavor this host offers (operator's choice in the agent config).
    flavor: Annotated[str, Meta(max_length=64)] = ""
    labels: dict[LabelKey, LabelValue] = {}
    #: ``host:port`` where users reach this agent's SSH server into its notebooks (shown in
    #: ``Notebook.ssh``); "" when it has none.
    ssh_address: HostPort = ""


class RegisterReply(Struct):
    host: str
    heartbeat_interval_s: float
    #: The fleet's SSH host key (OpenSSH private key): every agent presents the same one, so a
    #: client's known_hosts entry for a notebook holds whichever host runs it. "": none.
    ssh_host_key: str = ""


class NotebookActivity(Struct):
    """What the agent's editor proxy saw of one notebook (cumulative since the agent started
    proxying it; the scheduler keeps the latest)."""

    notebook: str
    last_activity_at: float
    bytes_in: int
    bytes_out: int


class WorkspaceUse(Struct, forbid_unknown_fields=True):
    """Disk one running notebook's workspace takes on the host: allocated blocks of its host
    dir (symlinks not followed, hard links counted once), as measured at ``measured_at``."""

    notebook: str
    used_bytes: Annotated[int, Meta(ge=0)]
    measured_at: float


class Heartbeat(Struct, forbid_unknown_fields=True):
    """Every field has a default, so a heartbeat of an older agent decodes (the scheduler
    must be upgraded first: it refuses fields it does not know)."""

    gpus: list[GpuInfo] = []
    #: Notebook ids whose containers exist on the host, for the scheduler's bookkeeping.
    containers: list[str] = []
    #: Editor proxy activity of notebooks with traffic since the last heartbeat.
    activity: list[NotebookActivity] = []
    #: The filesystem holding ``workspaces_dir``; placement avoids a host whose disk is
    #: nearly full. ``None``: not measured.
    disk: DiskSpace | None = None
    #: Workspace disk use of running notebooks measured since the last acknowledged heartbeat.
    workspaces: list[WorkspaceUse] = []


class AuthorizeRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/agents/authorize`` (signed): may ``token`` open ``notebook``'s editor?"""

    notebook: str
    token: Annotated[str, Meta(max_length=512)]


class AuthorizeReply(Struct):
    allowed: bool
    #: The token's role when allowed.
    role: Role | None = None
    #: Why not, for the 403 page (unknown token, another project's, label selector...).
    reason: str = ""


class ExecRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/notebooks/{id}/exec`` (operator): run ``command`` in the notebook's
    container as its user."""

    command: Annotated[list[Argument], Meta(min_length=1)]
    timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0


class ExecResult(Struct):
    exit_code: int
    #: stdout and stderr interleaved, at most 1 MiB (``truncated`` says so).
    output: str
    truncated: bool = False


class HeartbeatReply(Struct):
    #: False when the scheduler does not know this host (e.g. its database was reset): the agent
    #: registers again.
    known: bool
    heartbeat_interval_s: float


class Assignment(Struct):
    """What the scheduler wants for one notebook on this host.

    ``generation`` grows by one at every start; a report for an older generation is dropped by
    the scheduler, and the agent labels containers with it so a restarted agent can tell a
    current container from a stale one.
    """

    notebook: str
    project: str
    generation: int
    desired: Desired
    state: NotebookState
    image: str
    command: list[str]
    editor_port: int
    url_path: str
    gpus: list[str]
    cpu: int
    memory_mb: int
    env: dict[str, str]
    #: True once a start has completed before: the workspace must then be restored and carry
    #: its ``.workspace.initialized`` marker.
    initialized: bool
    #: Secret the editor checks (per notebook, stable across restarts).
    access_token: str
    running_since: float | None = None
    #: uid:gid the editor runs as (the framework's ``user`` in the catalog); never root.
    user: str = "1000:1000"
    #: The editor is public through the proxy (no token asked).
    unsecure_http: bool = False
    #: Path prefix the editor is served under by the proxy: ``/notebooks/<id>/``.
    base_url: str = "/"
    volumes: list[VolumeAssignment] = []
    #: For a fork's first start: restore this snapshot of another notebook's workspace.
    restore_from: RestoreSource | None = None
    #: Full OpenSSH public key lines that may log in as this notebook (user name: its id);
    #: sent only while it is to run (``desired=running``), only to the host running it.
    ssh_public_keys: list[str] = []


class VolumeAssignment(Struct):
    """A volume with its datastore resolved: what the agent needs to sync it."""

    volume: Volume
    endpoint: str
    region: str
    access_key: str
    secret_key: str


class Assignments(Struct):
    #: Changes whenever any assignment for the host changes; pass it back as ``since``.
    version: int
    items: list[Assignment]


class Transition(Struct, forbid_unknown_fields=True):
    notebook: str
    generation: Annotated[int, Meta(ge=1)]
    state: NotebookState
    reason: Annotated[str, Meta(max_length=2000)]
    at: float
    #: Set with RUNNING: where the editor answers.
    url: str | None = None


class TransitionBatch(Struct, forbid_unknown_fields=True):
    items: list[Transition]


class TransitionResult(Struct):
    notebook: str
    #: "applied", "repeat" (already in that state), "stale" (older generation or unknown
    #: notebook: the agent drops it), or "refused" (not allowed from the current state).
    outcome: Literal["applied", "repeat", "stale", "refused"]
    state: NotebookState | None = None
    message: str = ""


class TransitionReply(Struct):
    items: list[TransitionResult]


class UsageItem(Struct, forbid_unknown_fields=True):
    """Billed minutes so far of one run (one generation) of a notebook.

    Cumulative, so replays and duplicates are harmless: the scheduler keeps the largest value.
    """

    notebook: str
    generation: Annotated[int, Meta(ge=1)]
    billed_minutes: Annotated[int, Meta(ge=0)]
    at: float


class UsageBatch(Struct, forbid_unknown_fields=True):
    items: list[UsageItem]


class SnapshotReport(Struct, forbid_unknown_fields=True):
    """``POST /v1/agents/snapshots``: a snapshot was committed (and, after retention, which of
    the notebook's snapshots are still kept)."""

    notebook: str
    generation: Annotated[int, Meta(ge=1)]
    snapshot: SnapshotInfo
    retained: list[str] | None = None


class ProgressReport(Struct, forbid_unknown_fields=True):
    """``POST /v1/agents/progress``: best effort, latest wins; not stored across restarts."""

    notebook: str
    generation: Annotated[int, Meta(ge=1)]
    progress: Progress | None


class Ack(Struct):
    ok: bool = True


# ---------------------------------------------------------------- encode / decode

T = TypeVar("T")
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


def decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    """The decoder for ``type_``, built once and reused."""
    found = _decoders.get(type_)
    if found is None:
        found = _decoders[type_] = msgspec.json.Decoder(type_)
    return found


def decode(body: bytes, type_: type[T]) -> T:
    """Decode a request body; any problem is a 400 whose message names the field."""
    if not body:
        raise ApiError("invalid_request", "request body is empty; expected a JSON object")
    try:
        return decoder(type_).decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError("invalid_request", f"invalid request: {exc}")
    except msgspec.DecodeError as exc:
        raise ApiError("invalid_request", f"request body is not valid JSON: {exc}")


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)
