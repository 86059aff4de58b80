"""Notebook containers through the Docker API (aiodocker).

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
  :class:`NoSuchContainer`.

Security settings of every container: the framework's non-root user, all capabilities dropped,
``no-new-privileges``, ``/tmp`` on tmpfs, the editor port published on ``public_host`` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiodocker
from aiodocker.exceptions import DockerError

log = logging.getLogger(__name__)

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
    public_host: str = "127.0.0.1"
    nvidia_runtime: bool = False
    #: Data volumes: (host dir, mount path, read only), bound after /workspace and /data.
    extra_mounts: list[tuple[str, str, bool]] = field(default_factory=list)


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


class ContainerRuntime(Protocol):
    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo: ...

    async def inspect(self, notebook: str) -> ContainerInfo | None: ...

    async def list_managed(self) -> list[ContainerInfo]: ...

    async def stop(self, notebook: str, timeout_s: float = 10.0) -> None: ...

    async def remove(self, notebook: str) -> None: ...

    async def logs(self, notebook: str, tail: int = 200) -> str: ...

    async def close(self) -> None: ...


def host_cpus() -> int:
    return os.cpu_count() or 1


def host_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def parse_user(user: str) -> tuple[int, int]:
    """``"1000:1000"`` → (1000, 1000); a missing gid is the uid. Refuses root and names."""
    uid_text, _, gid_text = user.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise ValueError(f"user {user!r} must be numeric uid[:gid]")
    if uid == 0:
        raise ValueError("notebook containers never run as root")
    return uid, gid


def chown_tree(root: str, uid: int, gid: int) -> None:
    """Make ``root`` and everything under it (symlinks themselves, never their targets) owned
    by ``uid:gid``, creating ``root`` if needed, so the non-root editor can write its bind
    mounts. Files already owned right are left alone."""
    os.makedirs(root, exist_ok=True)
    for directory, dirnames, filenames in os.walk(root):
        for name in [directory, *(os.path.join(directory, n) for n in dirnames + filenames)]:
            st = os.lstat(name)
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(name, uid, gid)


def container_config(
    spec: ContainerSpec,
    *,
    host_id: str = "",
    cpus: int | None = None,
    memory_mb: int | None = None,
) -> dict[str, Any]:
    """The Docker create body for ``spec`` (separate from the API call so it can be tested)."""
    cpus = host_cpus() if cpus is None else cpus
    memory_mb = host_memory_mb() if memory_mb is None else memory_mb
    parse_user(spec.user)
    port_key = f"{spec.editor_port}/tcp"
    env = dict(spec.env)
    env["HOME"] = "/workspace"
    env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.gpus) if spec.gpus else "void"
    host_config: dict[str, Any] = {
        "Binds": [f"{spec.workspace_dir}:/workspace:rw", f"{spec.scratch_dir}:/data:rw"],
        "Tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g"},
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        # An empty HostPort asks Docker for a free one; HostIp keeps it off other interfaces.
        "PortBindings": {port_key: [{"HostIp": spec.public_host, "HostPort": ""}]},
        "RestartPolicy": {"Name": "no"},
        "Init": True,
    }
    host_config["Binds"] += [
        f"{source}:{target}:{'ro' if read_only else 'rw'}"
        for source, target, read_only in spec.extra_mounts
    ]
    if spec.cpu > 0:
        host_config["NanoCpus"] = min(spec.cpu, cpus) * 1_000_000_000
    if spec.memory_mb > 0:
        host_config["Memory"] = min(spec.memory_mb, memory_mb) * 1024 * 1024
    if spec.gpus and spec.nvidia_runtime:
        host_config["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpus), "Capabilities": [["gpu"]]}
        ]
    labels = {
        L_MANAGED: "1",
        L_NOTEBOOK: spec.notebook,
        L_PROJECT: spec.project,
        L_GENERATION: str(spec.generation),
        L_GPUS: ",".join(spec.gpus),
    }
    if host_id:
        labels[L_HOST] = host_id
    return {
        "Image": spec.image,
        "Cmd": list(spec.command),
        "User": spec.user,
        "WorkingDir": "/workspace",
        "Env": [f"{key}={value}" for key, value in sorted(env.items())],
        "ExposedPorts": {port_key: {}},
        "Labels": labels,
        "HostConfig": host_config,
    }


def _info_from_inspect(data: dict[str, Any]) -> ContainerInfo:
    labels = (data.get("Config") or {}).get("Labels") or {}
    state = data.get("State") or {}
    host_port = None
    for bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).values():
        for binding in bindings or []:
            if binding.get("HostPort"):
                host_port = int(binding["HostPort"])
                break
        if host_port is not None:
            break
    status = state.get("Status", "unknown")
    return ContainerInfo(
        notebook=labels.get(L_NOTEBOOK, data.get("Name", "").lstrip("/").removeprefix(PREFIX)),
        generation=int(labels.get(L_GENERATION, "0") or 0),
        project=labels.get(L_PROJECT, ""),
        gpus=[g for g in labels.get(L_GPUS, "").split(",") if g],
        status=status,
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        host_port=host_port,
        container_id=data.get("Id", ""),
    )


class DockerRuntime:
    """:class:`ContainerRuntime` on a Docker daemon. ``url`` empty means Docker's default.

    With ``host_id`` set, containers also carry ``nbfleet.host=<host_id>`` and
    ``list_managed`` sees only those, so agents sharing a daemon never adopt each other's.
    """

    def __init__(self, url: str = "", *, host_id: str = "") -> None:
        self._url = url or None
        self.host_id = host_id
        self._docker: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        config = container_config(spec, host_id=self.host_id)
        uid, gid = parse_user(spec.user)
        await asyncio.to_thread(chown_tree, spec.workspace_dir, uid, gid)
        await asyncio.to_thread(chown_tree, spec.scratch_dir, uid, gid)
        for source, _, read_only in spec.extra_mounts:
            if not read_only:  # the non-root editor writes rw volumes
                await asyncio.to_thread(chown_tree, source, uid, gid)
        name = container_name(spec.notebook)
        docker = self._client()
        try:
            container = await docker.containers.create(config, name=name)
        except DockerError as exc:
            if exc.status == 409:
                raise ContainerExists(f"container {name} already exists")
            if exc.status != 404:
                raise
            await self._pull(spec.image)
            container = await docker.containers.create(config, name=name)
        await container.start()
        info = await self.inspect(spec.notebook)
        if info is None:
            raise NoSuchContainer(f"container {name} vanished right after it started")
        return info

    async def _pull(self, image: str) -> None:
        log.info("image=%s not present, pulling", image)
        try:
            await self._client().images.pull(image)
        except DockerError as exc:
            raise ImageUnavailable(f"image {image} is not available: {exc.message}")

    async def inspect(self, notebook: str) -> ContainerInfo | None:
        try:
            container = await self._client().containers.get(container_name(notebook))
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return _info_from_inspect(container._container)

    async def list_managed(self) -> list[ContainerInfo]:
        labels = [f"{L_MANAGED}=1"]
        if self.host_id:
            labels.append(f"{L_HOST}={self.host_id}")
        containers = await self._client().containers.list(all=True, filters={"label": labels})
        found = []
        for container in containers:
            try:
                await container.show()
            except DockerError as exc:
                if exc.status == 404:  # removed between list and inspect
                    continue
                raise
            found.append(_info_from_inspect(container._container))
        return found

    async def stop(self, notebook: str, timeout_s: float = 10.0) -> None:
        try:
            container = self._client().containers.container(container_name(notebook))
            await container.stop(t=int(timeout_s))
        except DockerError as exc:
            if exc.status in (304, 404):  # already stopped / no such container
                return
            raise

    async def remove(self, notebook: str) -> None:
        try:
            container = self._client().containers.container(container_name(notebook))
            await container.delete(force=True, v=True)
        except DockerError as exc:
            # 409 "removal already in progress" ends the same way.
            if exc.status == 404 or (exc.status == 409 and "in progress" in exc.message):
                return
            raise

    async def logs(self, notebook: str, tail: int = 200) -> str:
        try:
            container = self._client().containers.container(container_name(notebook))
            lines = await container.log(stdout=True, stderr=True, tail=max(1, tail))
        except DockerError as exc:
            if exc.status == 404:
                raise NoSuchContainer(f"notebook {notebook} has no container on this host")
            raise
        return "".join(lines)
