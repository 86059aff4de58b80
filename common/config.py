"""Configuration: a TOML file, then environment overrides, validated into Structs.

Each daemon reads one file. Any top-level scalar setting can be overridden by an environment
variable named ``<PREFIX><SETTING>`` in upper case (``NBFLEET_SCHEDULER_LISTEN``,
``NBFLEET_AGENT_HOST_ID``, ``NBFLEET_URL``), which is how systemd drop-ins and tests adjust one
value without rewriting the file; the scheduler URL settings take a list there, comma-separated
(``NBFLEET_AGENT_SCHEDULER_URL=http://a:8470,http://b:8470``). A bad value is an error naming
the setting and the file.

Example scheduler file::

    listen = "0.0.0.0:8470"
    database = "/var/lib/nbfleet/scheduler/scheduler.db"
    admin_token_file = "/etc/nbfleet/admin.token"
    agent_secrets_dir = "/etc/nbfleet/agents"

    [catalog.frameworks.conda]
    editors = ["jupyterlab"]
    [catalog.frameworks.conda.versions."py3.11"]
    image = "nbfleet/conda:py3.11"

    [catalog.editors.jupyterlab]
    port = 8888
    command = ["jupyter-lab", "--ServerApp.token={token}", "--port={port}"]
    url_path = "/lab"
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from common.failover import parse_urls

Port = Annotated[int, Meta(ge=1, le=65535)]


class EditorSpec(Struct, forbid_unknown_fields=True):
    """How to run an editor. ``{token}``, ``{port}`` and ``{base_url}`` are filled in per
    notebook in ``command`` and ``url_path``."""

    port: Port
    command: list[str]
    url_path: str = "/"
    description: str = ""
    #: Which of the editor's own APIs tells the agent what it is doing (the idle signal):
    #: ``jupyter`` (Jupyter Server's ``/api/kernels``, ``/api/terminals`` and ``/api/status``,
    #: with the notebook's token), ``code-server`` (its ``/healthz`` heartbeat), or "" (none:
    #: only proxy traffic, SSH, GPU and CPU use count).
    activity_api: Literal["", "jupyter", "code-server"] = ""


class FrameworkVersionSpec(Struct, forbid_unknown_fields=True):
    """One version of a framework: the image that holds it. What the image contains (Python,
    the framework's packages, the editors) is read from its labels on the hosts, not written
    here, so the catalog shows what the image holds."""

    image: str
    description: str = ""


class FrameworkSpec(Struct, forbid_unknown_fields=True):
    """A framework and its versions (``[catalog.frameworks.NAME.versions."2.13"]``). A new
    notebook gets the newest version unless it asks for one, and keeps it across stops and
    starts until its owner changes it. ``image`` alone (configs before versions) is one
    version named after the image's tag (``nbfleet/conda:latest`` is version ``latest``)."""

    editors: list[str]
    image: str = ""
    versions: dict[str, FrameworkVersionSpec] = {}
    description: str = ""
    #: uid:gid the editor runs as inside the container; never root.
    user: str = "1000:1000"

    def all_versions(self) -> dict[str, FrameworkVersionSpec]:
        """Every version, newest first."""
        versions = dict(self.versions)
        if not versions and self.image:
            versions[image_tag(self.image)] = FrameworkVersionSpec(image=self.image)
        return dict(sorted(versions.items(), key=lambda kv: version_key(kv[0]), reverse=True))

    def newest(self) -> str:
        return next(iter(self.all_versions()))


def image_tag(image: str) -> str:
    """The tag of an image reference (``latest`` when it names none; never a digest's)."""
    name = image.partition("@")[0]
    last = name.rpartition("/")[2]
    return last.partition(":")[2] or "latest"


def image_ref(image: str) -> str:
    """``image`` as Docker names it in an image's tags: with ``:latest`` when it has no tag."""
    if "@" in image or ":" in image.rpartition("/")[2]:
        return image
    return f"{image}:latest"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order of versions: numbers compared as numbers (``2.13`` after ``2.9``), anything else
    as text, a number after text (``py3.11`` vs ``py3.9``: 11 > 9)."""
    parts = re.findall(r"\d+|[^\d.]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


class Catalog(Struct, forbid_unknown_fields=True):
    frameworks: dict[str, FrameworkSpec] = {}
    editors: dict[str, EditorSpec] = {}

    def validate(self) -> None:
        for name, framework in self.frameworks.items():
            if bool(framework.image) == bool(framework.versions):
                raise ConfigError(
                    f"catalog.frameworks.{name} needs either versions "
                    f'([catalog.frameworks.{name}.versions."1.0"] image = ...) or image, '
                    "not both"
                    if framework.image
                    else f"catalog.frameworks.{name} has no versions "
                    f'([catalog.frameworks.{name}.versions."1.0"] image = ...)'
                )
            for version, spec in framework.versions.items():
                if not spec.image or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", version):
                    raise ConfigError(
                        f"catalog.frameworks.{name}.versions.{version!r}: a version is letters, "
                        "digits, '.', '_', '+' and '-' (at most 64), and needs an image"
                    )
            for editor in framework.editors:
                if editor not in self.editors:
                    raise ConfigError(
                        f"catalog.frameworks.{name}.editors names {editor!r}, "
                        "which is not in catalog.editors"
                    )
            uid = framework.user.partition(":")[0]
            if uid in ("0", "root", ""):
                raise ConfigError(f"catalog.frameworks.{name}.user must not be root")


class FlavorSpec(Struct, forbid_unknown_fields=True):
    """A shape of notebook, per unit: one GPU of ``gpu_model`` (a GPU flavor) or one CPU (a CPU
    flavor, ``gpu_model = ""``). A request for N units gets N times ``cpu``, ``memory_mb`` and
    ``disk_gb``. Hosts name the flavor they offer in their agent config."""

    gpu_model: str = ""
    cpu: int = 4
    memory_mb: int = 16384
    disk_gb: int = 50
    description: str = ""


class QuotaDefaults(Struct, forbid_unknown_fields=True):
    """Quotas a new project starts with; operators change them per project."""

    gpus: int = 4
    cpus: int = 48
    notebooks: int = 10
    gpus_per_notebook: int = 4
    cpus_per_notebook: int = 12
    #: A RUNNING notebook with no activity for this long is stopped (its workspace saved);
    #: 0: never (the default). Users may ask for a shorter one at ``run``.
    idle_timeout_s: Annotated[float, Meta(ge=0)] = 0.0


class IdleThresholds(Struct, forbid_unknown_fields=True):
    """What counts as activity besides the editor, SSH and the editor's own APIs: a notebook's
    GPUs busier than ``gpu_busy_pct`` (NVML utilization; any one of them), or, for a CPU
    notebook, its container using more than ``cpu_busy_pct`` of the CPUs it was given."""

    gpu_busy_pct: Annotated[float, Meta(ge=0, le=100)] = 5.0
    cpu_busy_pct: Annotated[float, Meta(ge=0, le=100)] = 5.0


class SchedulerConfig(Struct, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8470"
    #: The address users reach the scheduler at (e.g. ``https://notebooks.example.com``); a
    #: notebook's URL starts with it. Empty: the address each caller used.
    public_url: str = ""
    #: The SQLite file, when ``database_url`` is empty.
    database: str = "/var/lib/nbfleet/scheduler/scheduler.db"
    #: Where the scheduler keeps its state, as a URL; it wins over ``database`` when set.
    #: ``sqlite:///var/lib/nbfleet/scheduler/scheduler.db`` (a file: one scheduler process, the
    #: embedded default) or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` (any number
    #: of scheduler processes on one database; asyncpg's URL, so ``?sslmode=...`` and the
    #: ``PG*`` environment variables work). ``nbfleet-scheduler migrate`` prepares PostgreSQL.
    database_url: str = ""
    #: Created with a fresh token on first start when absent.
    admin_token_file: str = "/etc/nbfleet/admin.token"
    #: Where ``add-host`` leaves a copy of an agent's HMAC secret (a file named by host id,
    #: 0600) for the operator to hand to the agent. The secrets themselves live in the
    #: database; files an older scheduler kept here are imported once at start.
    agent_secrets_dir: str = "/etc/nbfleet/agents"
    #: The key agent secrets are encrypted with in the database (Fernet, created 0600 on first
    #: start when absent; default: agent_secrets.key beside admin_token_file). Every replica
    #: must be given the same file.
    secrets_key_file: str = ""
    #: The token ``nbfleet-router`` asks notebooks' locations with (created on first start
    #: when absent; default: router.token beside admin_token_file). It reaches
    #: ``/v1/router/*`` only. Every replica needs the same file; give routers a copy.
    router_token_file: str = ""
    #: The token a Prometheus server scrapes ``GET /metrics`` with (created on first start when
    #: absent; default: metrics.token beside admin_token_file). It reaches ``/metrics`` only;
    #: the admin token does too.
    metrics_token_file: str = ""
    #: The SSH host key every agent presents (ed25519, created on first start when absent;
    #: default: ssh_host_ed25519_key beside admin_token_file). Agents get it when they register.
    ssh_host_key_file: str = ""
    heartbeat_interval_s: float = 10.0
    #: A host silent for this many heartbeat intervals is reported as lost.
    heartbeat_misses: int = 3
    #: CPUs and memory given to a GPU notebook per GPU (the flavor's shape).
    cpus_per_gpu: int = 4
    memory_mb_per_cpu: int = 4096
    memory_mb_per_gpu: int = 16384
    #: ``binpack`` (leave the fewest GPUs stranded, so whole hosts stay free for big requests)
    #: or ``spread`` (the host with the most free).
    placement: Literal["binpack", "spread"] = "binpack"
    #: Heartbeats the whole fleet may send per second; the interval given to agents grows with
    #: the fleet so this holds (never below ``heartbeat_interval_s``).
    heartbeat_budget_per_s: float = 200.0
    #: A notebook RUNNING this long is stopped (restarted with ``restart_on_timeout``).
    max_runtime_s: float = 7 * 24 * 3600.0
    #: Workspace storage: this many GB free per notebook for this many days from creation.
    free_storage_gb: float = 10.0
    free_storage_days: float = 30.0
    #: How often the scheduler's background loop runs (queue, timeouts, lost hosts).
    loop_interval_s: float = 1.0
    #: A host whose workspace filesystem has less free than the larger of these takes no new
    #: notebooks (they queue, or go elsewhere) until space is freed: a start restores the whole
    #: workspace there, and the notebooks already running keep writing. 5% leaves big disks
    #: room for those to grow; 10 GB (the free storage tier of one notebook) is the floor on
    #: small disks. Both 0: placement ignores disk space.
    min_free_disk_pct: Annotated[float, Meta(ge=0, le=100)] = 5.0
    min_free_disk_gb: Annotated[float, Meta(ge=0)] = 10.0
    quota: QuotaDefaults = msgspec.field(default_factory=QuotaDefaults)
    idle: IdleThresholds = msgspec.field(default_factory=IdleThresholds)
    flavors: dict[str, FlavorSpec] = {}
    catalog: Catalog = msgspec.field(default_factory=Catalog)

    def __post_init__(self) -> None:
        scheme, sep, rest = self.database_url.partition(":")
        if self.database_url and (scheme not in DATABASE_SCHEMES or not sep or not rest):
            raise ValueError(
                f"database_url {self.database_url!r} must be sqlite:///PATH or "
                "postgresql://USER@HOST[:PORT]/DATABASE"
            )


#: The ``database_url`` schemes the scheduler knows (``postgres`` is libpq's short form).
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")


class AgentConfig(Struct, forbid_unknown_fields=True):
    host_id: str = ""
    #: The scheduler's URL, or several (replicas, or load balancers in front of them): a list,
    #: or one string with commas. The agent fails over between them (:mod:`common.failover`).
    scheduler_url: str | list[str] = "http://127.0.0.1:8470"
    secret_file: str = "/etc/nbfleet/agent.secret"
    #: A copy of the scheduler's metrics token (``nbfleet-scheduler metrics-token``): a
    #: Prometheus server scrapes ``GET /metrics`` with it. Empty: ``/metrics`` is off.
    metrics_token_file: str = ""
    #: Where the agent's own HTTP server listens (logs now, the editor proxy later).
    listen: str = "127.0.0.1:8471"
    #: How the scheduler and users reach this host (the host of ``agent_url``, and of the SSH
    #: address unless ``ssh_public_host`` is set).
    public_host: str = "127.0.0.1"
    #: The address notebook containers' editor ports are published on, which the agent's
    #: readiness probe and editor proxy connect to. Only the agent should reach it: the proxy
    #: is the way in, and behind it an editor trusts whoever connects. Loopback unless the
    #: agent runs in a network namespace of its own (then an address of the host's namespace
    #: that the agent's namespace routes to, and nobody else's).
    upstream_host: str = "127.0.0.1"
    #: Where the agent serves SSH into its notebooks (``HOST:PORT``; "" turns SSH off). Users
    #: reach it at ``ssh_public_host`` (default ``public_host``) and the bound port.
    ssh_listen: str = ""
    ssh_public_host: str = ""
    #: An SSH host key of this host's own (OpenSSH private key file). Default: the fleet's,
    #: which the scheduler sends at registration, so a notebook's host key stays the same
    #: whichever host runs it (until then, one made in ``state_dir``).
    ssh_host_key_file: str = ""
    #: Host directories: one per notebook for /workspace, one for /data scratch.
    workspaces_dir: str = "/var/lib/nbfleet/workspaces"
    scratch_dir: str = "/var/lib/nbfleet/scratch"
    state_dir: str = "/var/lib/nbfleet/agent"
    docker_url: str = ""
    #: Pass GPUs as an NVIDIA device request; without the NVIDIA runtime only
    #: ``NVIDIA_VISIBLE_DEVICES`` is set.
    nvidia_runtime: bool = False
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    workspace_bucket: str = "nbfleet-workspaces"
    sync_concurrency: int = 16
    #: Seconds an editor gets to answer before a STARTING notebook is declared failed.
    start_timeout_s: float = 300.0
    #: A RUNNING notebook's workspace is snapshotted this often, so a host that dies loses at
    #: most this much work. 0 disables checkpoints.
    checkpoint_interval_s: float = 600.0
    #: Snapshots kept: the last N, and one a day for this many days.
    retention_last: int = 5
    retention_daily: int = 7
    #: Host directory for data volumes (one subdirectory per notebook).
    volumes_dir: str = "/var/lib/nbfleet/volumes"
    reconcile_interval_s: float = 2.0
    #: How often a STARTING notebook's editor is asked whether it answers yet. A reconcile
    #: step keeps asking at this pace for up to ``reconcile_interval_s`` (the next tick goes
    #: on), so RUNNING follows the editor's first answer by at most this much rather than by
    #: up to a whole reconcile interval.
    editor_probe_interval_s: Annotated[float, Meta(gt=0)] = 0.1
    usage_interval_s: float = 30.0
    #: The catalog flavor this host offers, and labels shown to operators.
    flavor: str = ""
    labels: dict[str, str] = {}
    #: Per-container limits, so one notebook cannot take the host down for the others
    #: (0: Docker's default, i.e. none).
    #: Processes and threads (a fork bomb stops here). 4096 holds an editor, its kernels, a
    #: DataLoader's workers with their threads and a parallel build, while eight notebooks
    #: still leave room in a kernel.pid_max of 32768 (the default on many distributions).
    pids_limit: Annotated[int, Meta(ge=0)] = 4096
    #: Open files per process (``ulimit -n``, soft and hard). Linux's usual 1024 is too few for
    #: PyTorch's DataLoader (a descriptor per shared tensor) and editors' file watchers;
    #: dockerd otherwise hands containers its own limit (often 2^20 or more), which lets one
    #: process pin a large part of the host's open files and makes programs that close every
    #: possible descriptor at start slow. If dockerd may not raise its own hard limit (it lacks
    #: CAP_SYS_RESOURCE, e.g. rootless), containers keep dockerd's limit and the agent warns.
    nofile_limit: Annotated[int, Meta(ge=0)] = 65536
    #: ``/dev/shm`` (Docker's 64 MB default breaks PyTorch DataLoaders with workers):
    #: ``shm_fraction`` of the notebook's memory limit, at most ``shm_max_mb``, never below
    #: 64 MB. Pages in /dev/shm count against the container's memory limit, so this is a
    #: ceiling, not a reservation. ``shm_size_mb`` > 0 sets one size for every notebook.
    shm_fraction: Annotated[float, Meta(ge=0, le=1)] = 0.5
    shm_max_mb: Annotated[int, Meta(ge=0)] = 65536
    shm_size_mb: Annotated[int, Meta(ge=0)] = 0
    #: Each running notebook's workspace disk use is measured (a walk of its host dir, in a
    #: worker thread) at most this often, and reported with the heartbeats.
    disk_usage_interval_s: Annotated[float, Meta(gt=0)] = 60.0
    #: While no scheduler answers (unreachable, or 5xx), the editor proxy keeps admitting a
    #: token the scheduler allowed for a notebook for this long after it last confirmed it,
    #: so open editors keep working through a control-plane outage. Held in memory only (an
    #: agent restarted during an outage has nothing to vouch for); 0 turns it off.
    authorize_grace_s: Annotated[float, Meta(ge=0)] = 900.0
    #: How often the agent asks each running notebook's editor what it is doing (kernels,
    #: terminals, code-server's heartbeat) and looks at its GPU and CPU use: the idle signal,
    #: sent with the heartbeats. Keep it well under the shortest idle timeout in use.
    activity_interval_s: Annotated[float, Meta(gt=0)] = 30.0

    def __post_init__(self) -> None:
        parse_urls(self.scheduler_url, "scheduler_url")  # a bad URL fails at load, named


class RouterConfig(Struct, forbid_unknown_fields=True):
    """``nbfleet-router``: serves notebooks' stable URLs (``/notebooks/{id}/...``) in front of
    the scheduler replicas, and keeps serving open editors while none answers."""

    listen: str = "127.0.0.1:8472"
    #: The scheduler's URL or several (replicas, or a load balancer's address that does not
    #: route ``/notebooks/`` back to this router), as ``AgentConfig.scheduler_url`` takes them.
    scheduler_url: str | list[str] = "http://127.0.0.1:8470"
    #: A copy of the scheduler's ``router_token_file``.
    token_file: str = "/etc/nbfleet/router.token"
    #: How long a notebook's location, once confirmed by a scheduler, is used while no scheduler
    #: answers (the agent's ``authorize_grace_s`` bounds who may use it).
    outage_grace_s: Annotated[float, Meta(ge=0)] = 900.0
    #: How long a location is used before a scheduler is asked again (a notebook that moved to
    #: another host is followed within this).
    lookup_ttl_s: Annotated[float, Meta(gt=0, le=60)] = 1.0

    def __post_init__(self) -> None:
        parse_urls(self.scheduler_url, "scheduler_url")


class ClientConfig(Struct, forbid_unknown_fields=True):
    #: The scheduler's URL or several, as ``AgentConfig.scheduler_url`` takes them.
    url: str | list[str] = "http://127.0.0.1:8470"
    token: str = ""

    def __post_init__(self) -> None:
        parse_urls(self.url, "url")


class ConfigError(Exception):
    pass


C = TypeVar("C", bound=Struct)


def load(
    type_: type[C],
    path: str | Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Read ``path`` (optional), apply ``<env_prefix><FIELD>`` overrides and validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = msgspec.toml.decode(Path(path).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist")
        except msgspec.DecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}")
    for field in msgspec.structs.fields(type_):
        value = environ.get(env_prefix + field.name.upper())
        if value is not None:
            raw[field.name] = value
    try:
        # strict=False lets "8470" from the environment become an int, "true" a bool.
        config = msgspec.convert(raw, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}")
    catalog = getattr(config, "catalog", None)
    if isinstance(catalog, Catalog):
        catalog.validate()
    return config


def split_hostport(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT")
    return host, int(port)
