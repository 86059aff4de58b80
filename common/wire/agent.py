"""The agent protocol's bodies: register, heartbeat, editor authorization, exec,
assignments, and the reports an agent sends (transitions, usage, snapshots, progress)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from common.states import NotebookState
from common.wire.operator import DiskSpace
from common.wire.scalars import Argument, Desired, HostPort, LabelKey, LabelValue, Role
from common.wire.user import DatasyncDirection, Progress, RestoreSource, SnapshotInfo, Volume


class GpuInfo(Struct):
    """One GPU as NVML reports it."""

    uuid: Annotated[str, Meta(min_length=1, max_length=96)]
    index: Annotated[int, Meta(ge=0)]
    model: str
    memory_total_mb: Annotated[int, Meta(ge=0)]
    memory_used_mb: Annotated[int, Meta(ge=0)] = 0
    utilization_pct: Annotated[int, Meta(ge=0, le=100)] = 0
    #: Power drawn now; ``None`` where the board does not say.
    power_w: Annotated[float, Meta(ge=0)] | None = None


class HostImage(Struct):
    """A catalog image the host has: its tags (``nbfleet/pytorch:2.13``) and what its labels
    say it holds (``org.nbfleet.framework``, ``org.nbfleet.framework.version`` and each
    ``org.nbfleet.contents.<name>``)."""

    tags: list[Annotated[str, Meta(max_length=256)]]
    framework: str = ""
    version: str = ""
    contents: dict[Annotated[str, Meta(max_length=128)], Annotated[str, Meta(max_length=128)]] = {}


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
    #: The host's images carrying the framework label (what the catalog shows they hold).
    #: The agent registers again when they change.
    images: list[HostImage] = []


class RegisterReply(Struct):
    host: str
    heartbeat_interval_s: float
    #: The fleet's SSH host key (OpenSSH private key): every agent presents the same one, so a
    #: client's known_hosts entry for a notebook holds whichever host runs it. "": none.
    ssh_host_key: str = ""


class NotebookActivity(Struct):
    """The latest activity the agent saw of one notebook: through its editor proxy or SSH,
    in the editor's own API (a busy kernel, a terminal, code-server's heartbeat), or GPU or
    CPU use above the thresholds; bytes the proxy carried (cumulative since the agent started
    proxying it). The scheduler keeps the latest."""

    notebook: str
    last_activity_at: float
    bytes_in: int
    bytes_out: int
    #: What showed that activity, for people: ``editor traffic``, ``SSH``, ``kernel busy``,
    #: ``kernel``, ``terminal``, ``code-server``, ``GPU 87%``, ``CPU 40%``.
    signal: str = "editor traffic"


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


class DatasyncStart(Struct, forbid_unknown_fields=True):
    """``POST {agent_url}/v1/notebooks/{id}/datasync`` (signed): a datasync the scheduler has
    checked (the notebook RUNNING in run ``generation``; ``volumes``, as assigned, eligible
    for ``direction``). Answered with ``DatasyncEvent`` lines."""

    generation: Annotated[int, Meta(ge=1)]
    direction: DatasyncDirection
    volumes: Annotated[list[Volume], Meta(min_length=1)]


class HeartbeatReply(Struct):
    #: False when the scheduler does not know this host (e.g. its database was reset): the agent
    #: registers again.
    known: bool
    heartbeat_interval_s: float
    #: Silent for this many intervals, the host is declared lost (``heartbeat_misses``): the
    #: agent stops checkpointing after that long out of contact.
    heartbeat_misses: Annotated[int, Meta(ge=1)] = 3


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
    #: The catalog's name of the editor (``jupyterlab``), for what a start is doing.
    editor: str = ""
    #: Which editor API the agent reads the idle signal from (``EditorSpec.activity_api``).
    activity_api: Literal["", "jupyter", "code-server"] = ""
    #: Above these, the notebook's GPUs (any one) or, without GPUs, its CPUs count as activity
    #: (the scheduler's ``[idle]`` settings).
    gpu_busy_pct: float = 5.0
    cpu_busy_pct: float = 5.0
    #: The notebook's labels, which scope project tokens: when they change, the agent drops
    #: what it remembered of the scheduler's answers about who may open the editor.
    labels: dict[str, str] = {}


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


#: A start's or stop's steps and their seconds (a few, with short names).
Phases = Annotated[
    dict[Annotated[str, Meta(max_length=32)], Annotated[float, Meta(ge=0)]], Meta(max_length=16)
]


class Transition(Struct):
    """A state change an agent caused. Unknown fields are ignored, not refused: agents of the
    previous release still send ``url`` with RUNNING (and keep it in their spool), and a fleet
    is upgraded one host at a time."""

    notebook: str
    generation: Annotated[int, Meta(ge=1)]
    state: NotebookState
    reason: Annotated[str, Meta(max_length=2000)]
    at: float
    #: Seconds each step of the start or stop this state ends took on the agent (``wait``,
    #: ``restore``, ``volumes``, ``container``, ``editor``; ``container``, ``volumes``,
    #: ``push``), kept in the notebook's history.
    phases: Phases = {}


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
    """``POST /v1/agents/progress``: best effort, latest wins; written once per scheduler tick."""

    notebook: str
    generation: Annotated[int, Meta(ge=1)]
    progress: Progress | None


class Ack(Struct):
    ok: bool = True
