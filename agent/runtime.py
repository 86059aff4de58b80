"""The container runtime's interface: :class:`ContainerRuntime`, its contract, and the data
types, names and errors every caller uses. The Docker adapter is :mod:`agent.docker_runtime`;
the create body it sends (security settings, limits, mounts, labels) is
:mod:`agent.container_config`.

Contract of :class:`ContainerRuntime`:

* One container per notebook, named ``nbfleet-<notebook id>``, labelled ``nbfleet.managed=1``,
  ``nbfleet.notebook``, ``nbfleet.project``, ``nbfleet.generation``, ``nbfleet.gpus``
  (comma-separated UUIDs) and ``nbfleet.host``. The labels are how a restarted agent adopts
  what it already runs; ``list_managed`` returns only this host's containers.
* ``create_and_start`` creates and starts; a container of that name already existing is an error
  (:class:`ContainerExists`): the caller decides whether the old one may go. An image that is
  neither present nor pullable is :class:`ImageUnavailable`.
* ``inspect`` returns ``None`` when there is no such container.
* ``stop`` and ``remove`` are idempotent: a missing container (404) is success, and so is
  stopping a container that is not running.
* ``logs`` returns the last ``tail`` lines of stdout and stderr as text; a missing container is
  :class:`NoSuchContainer`. ``follow_logs`` yields them, then what follows as it is written,
  until the container stops (a missing container: :class:`NoSuchContainer` at the first step).
* ``exec`` runs a command in the running container as ``user``, stdout and stderr combined and
  capped; past ``timeout_s`` the command is killed (best effort: by its host pid, which needs
  the agent on the daemon's host) and the result says it timed out. A missing container is
  :class:`NoSuchContainer`, a stopped one :class:`ContainerNotRunning`.
* Each container gets a Docker bridge network of its own, ``nbfleet-<notebook id>``, labelled
  like the container (Docker isolates bridge networks from each other, so one notebook cannot
  reach another's editor at its container IP). ``remove`` removes it with the container;
  ``prune_networks`` removes those left behind by a crash. When Docker cannot create one (its
  address pools are exhausted: by default ~30 bridge networks per daemon; see
  ``default-address-pools`` in daemon.json) the container joins the default bridge and a
  warning says isolation is lost for it.

Every container runs as the framework's non-root user with all capabilities dropped, and is
limited (:class:`ContainerLimits`) so one notebook cannot take the host down for the others
(details: :mod:`agent.container_config`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from common import wire
from common.config import AgentConfig

PREFIX = "nbfleet-"
L_MANAGED = "nbfleet.managed"
L_NOTEBOOK = "nbfleet.notebook"
L_PROJECT = "nbfleet.project"
L_GENERATION = "nbfleet.generation"
L_GPUS = "nbfleet.gpus"
#: Which agent owns the container: several agents may share one dockerd (tests, e2e).
L_HOST = "nbfleet.host"


def container_name(notebook: str) -> str:
    return PREFIX + notebook


class RuntimeError_(Exception):
    """Base of the runtime's own errors."""


class ContainerExists(RuntimeError_):
    pass


class NoSuchContainer(RuntimeError_):
    pass


class ImageUnavailable(RuntimeError_):
    pass


class ContainerNotRunning(RuntimeError_):
    pass


@dataclass
class ExecOutput:
    exit_code: int
    #: stdout and stderr as they arrived, at most ``max_output`` bytes.
    output: bytes
    truncated: bool = False
    timed_out: bool = False


MIB = 1024 * 1024
#: Docker's own /dev/shm size: no notebook gets less.
DOCKER_SHM_MB = 64


@dataclass(frozen=True)
class ContainerLimits:
    """What one container may take besides CPUs and memory; 0 leaves Docker's default (none).
    The defaults are :class:`AgentConfig`'s (why each: there)."""

    pids: int = 4096
    nofile: int = 65536
    shm_fraction: float = 0.5
    shm_max_mb: int = 65536
    #: One /dev/shm size for every notebook (the operator's override); 0: from memory.
    shm_size_mb: int = 0

    @classmethod
    def from_config(cls, config: AgentConfig) -> ContainerLimits:
        return cls(
            pids=config.pids_limit,
            nofile=config.nofile_limit,
            shm_fraction=config.shm_fraction,
            shm_max_mb=config.shm_max_mb,
            shm_size_mb=config.shm_size_mb,
        )

    def shm_bytes(self, memory_mb: int) -> int:
        """/dev/shm for a container limited to ``memory_mb``: ``shm_size_mb`` when set, else
        ``shm_fraction`` of the memory, at most ``shm_max_mb``; never below Docker's 64 MB."""
        if self.shm_size_mb > 0:
            return self.shm_size_mb * MIB
        wanted = int(memory_mb * self.shm_fraction)
        if self.shm_max_mb > 0:
            wanted = min(wanted, self.shm_max_mb)
        return max(DOCKER_SHM_MB, wanted) * MIB


@dataclass
class ContainerSpec:
    notebook: str
    project: str
    generation: int
    image: str
    command: list[str]
    env: dict[str, str]
    #: "uid:gid"; never root.
    user: str
    gpus: list[str]
    cpu: int
    memory_mb: int
    editor_port: int
    workspace_dir: str
    scratch_dir: str
    #: The host address the editor port is published on (the agent's proxy connects there).
    upstream_host: str = "127.0.0.1"
    nvidia_runtime: bool = False
    #: Data volumes: (host dir, mount path, read only), bound after /workspace and /data.
    extra_mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    limits: ContainerLimits = field(default_factory=ContainerLimits)


@dataclass
class ContainerInfo:
    notebook: str
    generation: int
    project: str = ""
    gpus: list[str] = field(default_factory=list)
    #: Docker's status: created, running, paused, restarting, removing, exited, dead.
    status: str = "running"
    exit_code: int | None = None
    #: The host port the editor port is published on, once known.
    host_port: int | None = None
    container_id: str = ""

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting", "paused")


@dataclass(frozen=True)
class ContainerUsage:
    """What a running container has used, as its cgroup counts it (Docker's stats)."""

    #: CPU time of every process in it since it started.
    cpu_seconds: float
    #: Memory it holds that the kernel could not simply drop: use less the inactive file
    #: cache, as the kubelet and cAdvisor count a working set.
    memory_working_set_bytes: int


#: Labels of a catalog image (``scripts/build-images``), which say what it holds.
IMAGE_FRAMEWORK = "org.nbfleet.framework"
IMAGE_VERSION = "org.nbfleet.framework.version"
IMAGE_CONTENTS = "org.nbfleet.contents."


def host_image(tags: list[str], labels: dict[str, str]) -> wire.HostImage:
    """A catalog image as the agent reports it, from its tags and labels."""
    return wire.HostImage(
        tags=sorted(t for t in tags if t and t != "<none>:<none>"),
        framework=labels.get(IMAGE_FRAMEWORK, ""),
        version=labels.get(IMAGE_VERSION, ""),
        contents={
            key.removeprefix(IMAGE_CONTENTS): value
            for key, value in sorted(labels.items())
            if key.startswith(IMAGE_CONTENTS)
        },
    )


class ContainerRuntime(Protocol):
    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo: ...

    async def inspect(self, notebook: str) -> ContainerInfo | None: ...

    async def list_managed(self) -> list[ContainerInfo]: ...

    async def stop(self, notebook: str, timeout_s: float = 10.0) -> None: ...

    async def remove(self, notebook: str) -> None: ...

    async def logs(self, notebook: str, tail: int = 200) -> str: ...

    async def usage(self, notebook: str) -> ContainerUsage | None:
        """The notebook's container's CPU and memory use now; ``None`` unless it runs."""
        ...

    def follow_logs(self, notebook: str, tail: int = 200) -> AsyncIterator[str]: ...

    async def exec(
        self,
        notebook: str,
        command: list[str],
        *,
        user: str = "",
        timeout_s: float = 60.0,
        max_output: int = 1 << 20,
    ) -> ExecOutput: ...

    async def prune_networks(self, skip: set[str]) -> list[str]: ...

    async def framework_images(self) -> list[wire.HostImage]:
        """The host's tagged images carrying :data:`IMAGE_FRAMEWORK`, by tags."""
        ...

    async def close(self) -> None: ...
