"""The Docker create body (``container_config``): the limits that keep one notebook from taking
the host down for the others. The real dockerd applies them in
tests/integration/test_agent_limits_docker.py."""

from __future__ import annotations

import pytest

from agent.container_config import container_config
from agent.runtime import ContainerLimits, ContainerSpec
from common.config import AgentConfig, load

MIB = 1024 * 1024


def spec(memory_mb: int = 16384, **limits) -> ContainerSpec:
    return ContainerSpec(
        notebook="nb1",
        project="p",
        generation=1,
        image="img",
        command=["x"],
        env={},
        user="1000:1000",
        gpus=[],
        cpu=4,
        memory_mb=memory_mb,
        editor_port=8888,
        workspace_dir="/ws/nb1",
        scratch_dir="/scratch/nb1",
        limits=ContainerLimits(**limits),
    )


def host_config(s: ContainerSpec, *, memory_mb: int = 1_000_000) -> dict:
    return container_config(s, cpus=64, memory_mb=memory_mb)["HostConfig"]


def test_defaults_limit_pids_open_files_and_size_shm_from_memory() -> None:
    hc = host_config(spec(memory_mb=16384))
    assert hc["PidsLimit"] == 4096
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 65536, "Hard": 65536}]
    assert hc["ShmSize"] == 8192 * MIB  # half the memory limit
    assert hc["Memory"] == 16384 * MIB


def test_the_limit_defaults_are_the_agent_configs() -> None:
    assert ContainerLimits.from_config(AgentConfig()) == ContainerLimits()


def test_limits_come_from_the_agent_config() -> None:
    environ = {
        "NBFLEET_AGENT_PIDS_LIMIT": "512",
        "NBFLEET_AGENT_NOFILE_LIMIT": "8192",
        "NBFLEET_AGENT_SHM_FRACTION": "0.25",
        "NBFLEET_AGENT_SHM_MAX_MB": "1024",
        "NBFLEET_AGENT_SHM_SIZE_MB": "300",
    }
    config = load(AgentConfig, None, env_prefix="NBFLEET_AGENT_", environ=environ)
    assert ContainerLimits.from_config(config) == ContainerLimits(
        pids=512, nofile=8192, shm_fraction=0.25, shm_max_mb=1024, shm_size_mb=300
    )


@pytest.mark.parametrize(
    "memory_mb, host_memory_mb, limits, shm_mb",
    [
        (16384, 1_000_000, {}, 8192),
        # capped
        (655360, 1_000_000, {}, 65536),
        (4096, 1_000_000, {"shm_max_mb": 1024}, 1024),
        # never below Docker's own 64 MB
        (100, 1_000_000, {}, 64),
        # the memory limit is clamped to the host first
        (16384, 2048, {}, 1024),
        # no memory limit: a share of the host's memory
        (0, 8192, {}, 4096),
        # the operator's fixed size wins over everything
        (16384, 1_000_000, {"shm_size_mb": 2000}, 2000),
        (100, 1_000_000, {"shm_size_mb": 2000}, 2000),
        # shm_max_mb 0: no cap
        (655360, 1_000_000, {"shm_max_mb": 0}, 327680),
    ],
)
def test_shm_size(memory_mb: int, host_memory_mb: int, limits: dict, shm_mb: int) -> None:
    hc = host_config(spec(memory_mb, **limits), memory_mb=host_memory_mb)
    assert hc["ShmSize"] == shm_mb * MIB


def test_zero_leaves_dockers_default() -> None:
    hc = host_config(spec(pids=0, nofile=0))
    assert "PidsLimit" not in hc and "Ulimits" not in hc


def test_limits_leave_the_rest_of_the_hardening_alone() -> None:
    hc = host_config(spec(pids=100, nofile=1024, shm_size_mb=128))
    assert hc["CapDrop"] == ["ALL"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true"]
    assert hc["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=1g"}
    assert (hc["PidsLimit"], hc["Ulimits"][0]["Soft"], hc["ShmSize"]) == (100, 1024, 128 * MIB)


def test_bad_limits_in_the_config_are_refused_naming_the_setting() -> None:
    from common.config import ConfigError

    for name, value in (("PIDS_LIMIT", "-1"), ("SHM_FRACTION", "1.5")):
        with pytest.raises(ConfigError, match=name.lower()):
            load(AgentConfig, None, env_prefix="A_", environ={f"A_{name}": value})
