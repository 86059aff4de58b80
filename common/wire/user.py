"""The user API's bodies: notebooks, their snapshots and volumes, the catalog, datastores,
and the error body every endpoint answers with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from common.states import NotebookState
from common.wire.scalars import (
    CatalogKey,
    CpuCount,
    EnvName,
    EnvValue,
    GpuCount,
    IdleTimeout,
    LabelKey,
    LabelValue,
    Name,
    SshPublicKeys,
)

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

    phase: Literal[
        "image",
        "restore",
        "volumes-pull",
        "container",
        "editor",
        "push",
        "volumes-push",
        "checkpoint",
    ]
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    at: float
    detail: str = ""


DatasyncDirection = Literal["push", "pull"]


class DatasyncRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/notebooks/{id}/datasync`` (operator): sync a RUNNING notebook's volumes with
    their buckets now, without stopping it. ``volume`` is a datastore alias or a mount path and
    picks the notebook's volumes with it; ``None``: every volume the direction applies to
    (``push``: ``rw`` and ``rwd``, never ``ro``; ``pull``: all of them)."""

    volume: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    direction: DatasyncDirection = "push"


class DatasyncVolume(Struct):
    """What a datasync did to one volume."""

    #: ``container@alias[/prefix]:/mount/path:permission``.
    volume: str
    #: Files uploaded (push) or downloaded (pull), and their bytes.
    files: int = 0
    bytes: int = 0
    #: ``rwd`` push: objects deleted because their files were deleted.
    deleted: int = 0
    #: Already the same on both sides (as the volume's pull record says).
    unchanged: int = 0
    #: Pull: files changed here (or in the way) that an object would have replaced; kept.
    conflicts: int = 0
    #: Push: files that kept changing while read; not uploaded (the stop's push takes them).
    unstable: int = 0
    #: Links, special files, names no key can hold, vanished files, refused keys.
    skipped: int = 0
    #: The first hundred ``path: what happened`` of the above.
    details: list[str] = []
    #: Set when this volume's sync failed.
    error: str = ""


class DatasyncProgress(Struct, tag="progress", tag_field="event"):
    """A line of the datasync stream: how far it has got (also in ``Notebook.progress``)."""

    progress: Progress


class DatasyncResult(Struct, tag="result", tag_field="event"):
    """The last line of the datasync stream."""

    notebook: str
    direction: DatasyncDirection
    ok: bool
    volumes: list[DatasyncVolume] = []
    #: Why it failed (``ok`` false), naming the volume.
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


#: One line of ``POST /v1/notebooks/{id}/datasync``'s newline-delimited JSON reply.
DatasyncEvent = DatasyncProgress | DatasyncResult


class NotebookCreate(Struct, forbid_unknown_fields=True):
    """``POST /v1/notebooks``. Neither ``gpu`` nor ``cpu`` given means 1 GPU."""

    framework: CatalogKey
    editor: CatalogKey
    gpu: GpuCount | None = None
    #: One of the framework's versions in the catalog; ``None``: the newest. The notebook
    #: keeps it across stops and starts until it is changed (``PUT /v1/notebooks/{id}``).
    framework_version: CatalogKey | None = None
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
    #: Stop the notebook (workspace saved) after this many seconds without activity; never
    #: longer than its project's idle timeout (403), which applies when this is not given.
    idle_timeout_s: IdleTimeout | None = None


class NotebookUpdate(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``PUT /v1/notebooks/{id}`` (operator): what to change; a field left out is kept.

    Applied at once whatever the state: ``name``, ``labels`` (which scope tokens: the
    editor's proxy asks about every token again), ``ssh_public_keys`` (new SSH connections;
    open sessions go on), ``restart_on_timeout``, ``unsecure_http`` and ``idle_timeout_s``
    (``null``: the project's applies). ``envvars`` are the container's: a running notebook
    gets them at its next start (``Notebook.pending_restart`` says so). The rest only while it
    is STOPPED, FAILED or ERROR, else 409: ``gpu``, ``cpu`` and ``flavor`` (as at ``run``;
    the others kept), ``framework_version``, and ``volumes`` (STOPPED only: a notebook that
    failed may hold volume changes its last stop could not push)."""

    name: Name | UnsetType = UNSET
    labels: dict[LabelKey, LabelValue] | UnsetType = UNSET
    ssh_public_keys: SshPublicKeys | UnsetType = UNSET
    restart_on_timeout: bool | UnsetType = UNSET
    unsecure_http: bool | UnsetType = UNSET
    idle_timeout_s: IdleTimeout | None | UnsetType = UNSET
    envvars: dict[EnvName, EnvValue] | UnsetType = UNSET
    gpu: GpuCount | UnsetType = UNSET
    cpu: CpuCount | UnsetType = UNSET
    flavor: CatalogKey | None | UnsetType = UNSET
    framework_version: CatalogKey | UnsetType = UNSET
    volumes: list[Volume] | UnsetType = UNSET


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
    #: As the host's last heartbeat reported them (its agent reads NVML); ``None`` before any.
    utilization_pct: int | None = None
    memory_used_mb: int | None = None
    memory_total_mb: int | None = None


class StateChange(Struct):
    state: NotebookState
    reason: str
    at: float
    generation: int
    #: Seconds each step of the start or stop that ended here took, as its agent measured
    #: them (``restore``, ``container``, ``editor``, ``push``, ...).
    phases: dict[str, float] = {}


class QueueInfo(Struct):
    """Why and where a QUEUED notebook waits."""

    #: 1 is the next to be placed, counting every project's queued notebooks in fair order.
    position: int
    #: What it waits for, for people: ``"2 × H100"``, ``"4 CPUs"``.
    waiting_for: str
    queued_at: float
    #: What holds it: ``capacity`` (no host has room) or ``quota`` (its project is at a limit).
    blocked_by: Literal["capacity", "quota"] = "capacity"


class IdleStatus(Struct):
    """A RUNNING notebook's idle signal, as the scheduler holds it when it answers."""

    #: When the notebook was last active and what showed it (``editor traffic``, ``SSH``,
    #: ``kernel busy``, ``kernel``, ``terminal``, ``code-server``, ``GPU 87%``, ``CPU 40%``;
    #: ``started`` when nothing was seen since it started running).
    last_active_at: float
    signal: str
    #: Seconds since then, by the scheduler's clock.
    idle_s: float
    #: The idle timeout that applies (the shorter of the project's and the notebook's own),
    #: ``None``: it is never stopped for being idle.
    timeout_s: float | None = None


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
    #: The idle timeout asked for at ``run`` (``None``: the project's applies).
    idle_timeout_s: float | None = None
    #: While RUNNING (in ``get`` and ``list``): how long it has been idle and when it stops.
    idle: IdleStatus | None = None
    #: The framework's version the notebook runs (``image`` holds it).
    framework_version: str = ""
    #: Settings changed while it ran that its container gets at its next start (``envvars``).
    pending_restart: list[str] = []


class NotebookList(Struct):
    items: list[Notebook]


class CatalogVersion(Struct):
    """One version of a framework and what its image holds."""

    version: str
    image: str
    #: What the image holds, as its labels say (``python``, ``torch``, ``jupyterlab``,
    #: ``code-server`` ... → version), read by the agents of the hosts that have it; empty
    #: when no host has reported the image.
    contents: dict[str, str] = {}
    #: How many hosts have the image (their agents reported it).
    hosts: int = 0
    description: str = ""


class CatalogFramework(Struct):
    name: str
    #: The newest version's image (what a ``run`` without a version gets).
    image: str
    editors: list[str]
    description: str = ""
    #: Newest first; the first is what ``run`` picks when no version is asked for.
    versions: list[CatalogVersion] = []


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
