"""What a notebook's container is made of: the Docker create body for a
:class:`agent.runtime.ContainerSpec`, built apart from the API call so it can be tested without
a daemon (:class:`agent.docker_runtime.DockerRuntime` sends it).

Security settings of every container: the framework's non-root user, all capabilities dropped,
``no-new-privileges``, ``/tmp`` on tmpfs, the editor port published on ``spec.upstream_host``
only (the agent's ``upstream_host``, loopback by default, so its proxy is the only way in).

Limits of every container (:class:`agent.runtime.ContainerLimits`, from the agent config), so one
notebook cannot take the host down for the others: CPUs and memory clamped to the host, a PID
limit, an open-files limit (``nofile``), and ``/dev/shm`` sized from the memory limit.
"""

from __future__ import annotations

import os
from typing import Any

from agent.runtime import (
    L_GENERATION,
    L_GPUS,
    L_HOST,
    L_MANAGED,
    L_NOTEBOOK,
    L_PROJECT,
    MIB,
    ContainerSpec,
)


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
        "PortBindings": {port_key: [{"HostIp": spec.upstream_host, "HostPort": ""}]},
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
