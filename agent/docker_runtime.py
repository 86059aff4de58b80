"""Notebook containers through the Docker API (aiodocker): :class:`DockerRuntime`, the
:class:`agent.runtime.ContainerRuntime` the agent runs with (contract: :mod:`agent.runtime`; the
create body it sends: :mod:`agent.container_config`).

A dockerd that may not raise ``nofile`` above its own hard limit fails the start; the container
is then made again without it (it keeps dockerd's limit), with a warning, and so are later ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from agent import userfs
from agent.container_config import container_config, network_labels, parse_user
from agent.runtime import (
    IMAGE_FRAMEWORK,
    L_GENERATION,
    L_GPUS,
    L_HOST,
    L_MANAGED,
    L_NOTEBOOK,
    L_PROJECT,
    PREFIX,
    ContainerExists,
    ContainerInfo,
    ContainerNotRunning,
    ContainerSpec,
    ContainerUsage,
    ExecOutput,
    ImageUnavailable,
    NoSuchContainer,
    container_name,
    host_image,
)
from common import wire

log = logging.getLogger(__name__)


def chown_tree(root: str, uid: int, gid: int) -> None:
    """Make ``root`` and everything under it owned by ``uid:gid`` so the non-root editor can
    write its bind mounts; by directory descriptors, never following a link
    (:func:`agent.userfs.chown_tree`)."""
    userfs.chown_tree(root, uid, gid)


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
    """:class:`agent.runtime.ContainerRuntime` on a Docker daemon. ``url`` empty means Docker's
    default.

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

    async def framework_images(self) -> list[wire.HostImage]:
        found = await self._client().images.list(filters={"label": [IMAGE_FRAMEWORK]})
        images = [host_image(i.get("RepoTags") or [], i.get("Labels") or {}) for i in found]
        return sorted((i for i in images if i.tags), key=lambda i: i.tags)

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

    async def usage(self, notebook: str) -> ContainerUsage | None:
        container = self._client().containers.container(container_name(notebook))
        try:
            # One sample: Docker answers once it has read the cgroup (about a second).
            [stats] = await container.stats(stream=False)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return _usage_from_stats(stats)

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


def _usage_from_stats(stats: dict) -> ContainerUsage | None:
    """CPU and working set from a stats answer; ``None`` for a container that does not run
    (Docker answers it with empty figures)."""
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    memory = stats.get("memory_stats") or {}
    if "total_usage" not in cpu or "usage" not in memory:
        return None
    counts = memory.get("stats") or {}
    # cgroup v2 says inactive_file, v1 total_inactive_file.
    inactive = counts.get("inactive_file", counts.get("total_inactive_file", 0))
    return ContainerUsage(
        cpu_seconds=cpu["total_usage"] / 1e9,
        memory_working_set_bytes=max(0, memory["usage"] - inactive),
    )
