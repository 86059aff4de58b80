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

Security settings of every container: the framework's non-root user, all capabilities dropped,
``no-new-privileges``, ``/tmp`` on tmpfs, the editor port published on ``public_host`` only
(the agent sets loopback, so its proxy is the only way in).

Limits of every container (:class:`ContainerLimits`, from the agent config), so one notebook
cannot take the host down for the others: CPUs and memory clamped to the host, a PID limit,
an open-files limit (``nofile``), and ``/dev/shm`` sized from the memory limit. A dockerd that
may not raise ``nofile`` above its own hard limit fails the start; the container is then made
again without it (it keeps dockerd's limit), with a warning, and so are later ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiodocker
from aiodocker.exceptions import DockerError

from agent import userfs
from common.config import AgentConfig

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
    public_host: str = "127.0.0.1"
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


class ContainerRuntime(Protocol):
    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo: ...

    async def inspect(self, notebook: str) -> ContainerInfo | None: ...

    async def list_managed(self) -> list[ContainerInfo]: ...

    async def stop(self, notebook: str, timeout_s: float = 10.0) -> None: ...

    async def remove(self, notebook: str) -> None: ...

    async def logs(self, notebook: str, tail: int = 200) -> str: ...

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
    """Make ``root`` and everything under it owned by ``uid:gid`` so the non-root editor can
    write its bind mounts; by directory descriptors, never following a link
    (:func:`agent.userfs.chown_tree`)."""
    userfs.chown_tree(root, uid, gid)


def container_config(
    spec: ContainerSpec,
    *,
    host_id: str = "",
    cpus: int | None = None,
    memory_mb: int | None = None,
    network: str = "",
) -> dict[str, Any]:
    """The Docker create body for ``spec`` (separate from the API call so it can be tested).
    ``cpus`` and ``memory_mb`` are the host's (limits are clamped to them)."""
    cpus = host_cpus() if cpus is None else cpus
    memory_mb = host_memory_mb() if memory_mb is None else memory_mb
    # What the container may use: /dev/shm is sized from it (no memory limit: the host's).
    memory_limit_mb = min(spec.memory_mb, memory_mb) if spec.memory_mb > 0 else memory_mb
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
    if network:
        host_config["NetworkMode"] = network
    host_config["Binds"] += [
        f"{source}:{target}:{'ro' if read_only else 'rw'}"
        for source, target, read_only in spec.extra_mounts
    ]
    if spec.cpu > 0:
        host_config["NanoCpus"] = min(spec.cpu, cpus) * 1_000_000_000
    if spec.memory_mb > 0:
        host_config["Memory"] = memory_limit_mb * MIB
    limits = spec.limits
    host_config["ShmSize"] = limits.shm_bytes(memory_limit_mb)
    if limits.pids > 0:
        host_config["PidsLimit"] = limits.pids
    if limits.nofile > 0:
        host_config["Ulimits"] = [{"Name": "nofile", "Soft": limits.nofile, "Hard": limits.nofile}]
    if spec.gpus and spec.nvidia_runtime:
        host_config["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpus), "Capabilities": [["gpu"]]}
        ]
    labels = {
        **network_labels(spec.notebook, host_id),
        L_PROJECT: spec.project,
        L_GENERATION: str(spec.generation),
        L_GPUS: ",".join(spec.gpus),
    }
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


def network_labels(notebook: str, host_id: str = "") -> dict[str, str]:
    """Labels of a notebook's network (and the base of its container's)."""
    labels = {L_MANAGED: "1", L_NOTEBOOK: notebook}
    if host_id:
        labels[L_HOST] = host_id
    return labels


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
        #: dockerd refused to raise ``nofile``: containers are made without it from then on.
        self.nofile_refused = False

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        if self.nofile_refused:
            spec = _without_nofile(spec)
        container_config(spec, host_id=self.host_id)  # refuses a bad spec before any change
        uid, gid = parse_user(spec.user)
        await asyncio.to_thread(chown_tree, spec.workspace_dir, uid, gid)
        await asyncio.to_thread(chown_tree, spec.scratch_dir, uid, gid)
        for source, _, read_only in spec.extra_mounts:
            if not read_only:  # the non-root editor writes rw volumes
                await asyncio.to_thread(chown_tree, source, uid, gid)
        name = container_name(spec.notebook)
        docker = self._client()
        network = await self._network_for(spec.notebook)
        config = container_config(spec, host_id=self.host_id, network=network)
        try:
            try:
                container = await docker.containers.create(config, name=name)
            except DockerError as exc:
                if exc.status == 409:
                    raise ContainerExists(f"container {name} already exists")
                if exc.status != 404:
                    raise
                if network and "network" in exc.message.lower():
                    # Removed between our create and the container's (an outside prune).
                    network = await self._network_for(spec.notebook)
                    config = container_config(spec, host_id=self.host_id, network=network)
                else:
                    await self._pull(spec.image)
                container = await docker.containers.create(config, name=name)
        except ContainerExists:
            raise  # the network is that container's
        except BaseException:
            await self._remove_network(spec.notebook)
            raise
        try:
            await container.start()
        except DockerError as exc:
            if spec.limits.nofile <= 0 or not _rlimit_refused(exc):
                raise
            self.nofile_refused = True
            log.warning(
                "host=%s dockerd may not raise the open-files limit to %d (%s); notebook "
                "containers keep dockerd's own limit from now on. Set nofile_limit in the agent "
                "config to at most dockerd's hard limit (or give dockerd CAP_SYS_RESOURCE)",
                self.host_id,
                spec.limits.nofile,
                exc.message,
            )
            await container.delete(force=True, v=True)
            config = container_config(_without_nofile(spec), host_id=self.host_id, network=network)
            container = await docker.containers.create(config, name=name)
            await container.start()
        info = await self.inspect(spec.notebook)
        if info is None:
            raise NoSuchContainer(f"container {name} vanished right after it started")
        return info

    async def _network_for(self, notebook: str) -> str:
        """A new bridge network for the notebook (any left from an earlier attempt is removed
        first); its id, or ``""`` (the default bridge) when Docker cannot make one."""
        await self._remove_network(notebook)
        try:
            network = await self._client().networks.create(
                {
                    "Name": container_name(notebook),
                    "Driver": "bridge",
                    # Docker before API 1.44 creates same-named networks unless told not to.
                    "CheckDuplicate": True,
                    "Labels": network_labels(notebook, self.host_id),
                }
            )
        except DockerError as exc:
            log.warning(
                "notebook=%s no network of its own (%s); it joins the default bridge, where "
                "other notebooks can reach it. Widen dockerd's default-address-pools to "
                "restore isolation",
                notebook,
                exc.message,
            )
            return ""
        return network.id

    async def _networks_of(self, notebook: str | None = None) -> list[dict[str, Any]]:
        labels = [f"{L_MANAGED}=1"]
        if self.host_id:
            labels.append(f"{L_HOST}={self.host_id}")
        if notebook is not None:
            labels.append(f"{L_NOTEBOOK}={notebook}")
        return await self._client().networks.list(filters={"label": labels})

    async def _remove_network(self, notebook: str) -> bool:
        """Remove the notebook's network(s); none is success, one still in use stays
        (``prune_networks`` gets it later)."""
        removed = True
        for network in await self._networks_of(notebook):
            try:
                async with self._client()._query(f"networks/{network['Id']}", method="DELETE"):
                    pass
            except DockerError as exc:
                if exc.status != 404:
                    log.warning(
                        "notebook=%s network %s not removed, retried later: %s",
                        notebook,
                        network.get("Name"),
                        exc.message,
                    )
                    removed = False
        return removed

    async def prune_networks(self, skip: set[str]) -> list[str]:
        """Remove this host's notebook networks whose container is gone (an agent crashed
        between the two removals), except those of notebooks in ``skip`` (being worked on).
        Returns the notebooks whose network was removed."""
        found = await self._networks_of()
        if not found:
            return []
        labels = [f"{L_MANAGED}=1"] + ([f"{L_HOST}={self.host_id}"] if self.host_id else [])
        containers = await self._client().containers.list(all=True, filters={"label": labels})
        alive = {(c._container.get("Labels") or {}).get(L_NOTEBOOK) for c in containers}
        orphans = {(n.get("Labels") or {}).get(L_NOTEBOOK, "") for n in found} - alive - skip
        removed = []
        for notebook in sorted(orphans - {""}):
            if await self._remove_network(notebook):
                log.info("notebook=%s orphan network removed", notebook)
                removed.append(notebook)
        return removed

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
            if not (exc.status == 404 or (exc.status == 409 and "in progress" in exc.message)):
                raise
        await self._remove_network(notebook)

    async def logs(self, notebook: str, tail: int = 200) -> str:
        try:
            container = self._client().containers.container(container_name(notebook))
            lines = await container.log(stdout=True, stderr=True, tail=max(1, tail))
        except DockerError as exc:
            if exc.status == 404:
                raise NoSuchContainer(f"notebook {notebook} has no container on this host")
            raise
        return "".join(lines)

    async def follow_logs(self, notebook: str, tail: int = 200) -> AsyncIterator[str]:
        container = self._client().containers.container(container_name(notebook))
        stream = container.log(stdout=True, stderr=True, follow=True, tail=max(1, tail))
        try:
            async for text in stream:
                yield text
        except DockerError as exc:
            if exc.status == 404:
                raise NoSuchContainer(f"notebook {notebook} has no container on this host")
            raise
        finally:
            await stream.aclose()

    async def exec(
        self,
        notebook: str,
        command: list[str],
        *,
        user: str = "",
        timeout_s: float = 60.0,
        max_output: int = 1 << 20,
    ) -> ExecOutput:
        container = self._client().containers.container(container_name(notebook))
        try:
            execution = await container.exec(command, stdout=True, stderr=True, user=user)
        except DockerError as exc:
            if exc.status == 404:
                raise NoSuchContainer(f"notebook {notebook} has no container on this host")
            if exc.status == 409:
                raise ContainerNotRunning(f"notebook {notebook}'s container is not running")
            raise
        output = bytearray()
        truncated = timed_out = False
        stream = execution.start(detach=False)
        try:
            async with asyncio.timeout(timeout_s):
                while (message := await stream.read_out()) is not None:
                    room = max_output - len(output)
                    if len(message.data) > room:
                        truncated = True  # keep reading, so the command is never blocked
                    output += message.data[: max(0, room)]
        except TimeoutError:
            timed_out = True
        finally:
            await stream.close()
        details = await execution.inspect()
        if timed_out:
            _kill(details.get("Pid"), notebook)
            return ExecOutput(124, bytes(output), truncated, timed_out=True)
        exit_code = details.get("ExitCode")
        return ExecOutput(-1 if exit_code is None else exit_code, bytes(output), truncated)


def _without_nofile(spec: ContainerSpec) -> ContainerSpec:
    return replace(spec, limits=replace(spec.limits, nofile=0))


def _rlimit_refused(exc: DockerError) -> bool:
    """The OCI runtime could not set a resource limit (runc: "error setting rlimit type 7:
    operation not permitted"; crun: "setrlimit `RLIMIT_NOFILE`: Operation not permitted")."""
    message = exc.message.lower()
    return "rlimit" in message and "not permitted" in message


def _kill(pid: int | None, notebook: str) -> None:
    """Kill a timed-out exec by its host pid (Docker has no API for it). Best effort: it needs
    the agent on the daemon's host, allowed to signal the process."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError as exc:
        log.warning("notebook=%s timed-out exec (pid %d) left running: %s", notebook, pid, exc)
