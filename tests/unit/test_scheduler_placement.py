"""Placement decisions, without a database."""

from __future__ import annotations

import itertools

import pytest

from common.config import SchedulerConfig
from common.errors import ApiError
from scheduler.placement import FreeGpu, HostCapacity, Resources, place, resources_for

CONFIG = SchedulerConfig(cpus_per_gpu=4, memory_mb_per_gpu=16384, memory_mb_per_cpu=4096)


def host(name: str, free: int, *, cpus_free: int = 32, first_index: int = 0) -> HostCapacity:
    gpus = tuple(FreeGpu(f"{name}-{i}", i) for i in range(first_index, first_index + free))
    return HostCapacity(id=name, cpus_free=cpus_free, free_gpus=gpus)


def gpus(n: int) -> Resources:
    return resources_for(n, None, CONFIG)


def test_defaults() -> None:
    assert resources_for(None, None, CONFIG) == Resources(gpu=1, cpu=4, memory_mb=16384)
    assert resources_for(0, None, CONFIG) == Resources(gpu=0, cpu=1, memory_mb=4096)
    assert resources_for(None, 3, CONFIG) == Resources(gpu=0, cpu=3, memory_mb=12288)
    assert resources_for(2, 1, CONFIG) == Resources(gpu=2, cpu=1, memory_mb=32768)
    with pytest.raises(ApiError) as err:
        resources_for(0, 0, CONFIG)
    assert err.value.code == "invalid_request" and "$.cpu" in err.value.message


def test_best_fit_leaves_fewest_gpus_over() -> None:
    hosts = [host("a", 4), host("b", 2), host("c", 3)]
    assert place(hosts, gpus(2)).host == "b"
    assert place(hosts, gpus(3)).host == "c"
    assert place(hosts, gpus(4)).host == "a"


def test_ties_go_to_the_lowest_host_id() -> None:
    assert place([host("z", 2), host("m", 2), host("q", 2)], gpus(1)).host == "m"


def test_last_host_preferred_when_it_fits() -> None:
    hosts = [host("a", 4), host("b", 1)]
    assert place(hosts, gpus(1), last_host="a").host == "a"
    assert place(hosts, gpus(2), last_host="b").host == "a"  # b does not fit
    assert place(hosts, gpus(1), last_host="gone").host == "b"


def test_lowest_index_gpus_are_picked() -> None:
    h = HostCapacity("a", 8, (FreeGpu("g5", 5), FreeGpu("g1", 1), FreeGpu("g3", 3)))
    assert place([h], gpus(2)).gpus == ("g1", "g3")


def test_no_capacity_names_the_most_free() -> None:
    with pytest.raises(ApiError) as err:
        place([host("a", 1), host("b", 0)], gpus(2))
    assert err.value.code == "no_capacity" and err.value.status == 503
    assert err.value.message == "no host has 2 free GPUs (most free on one host: 1)"
    with pytest.raises(ApiError) as err:
        place([], gpus(1))
    assert "no ready host" in err.value.message


def test_cpu_notebooks_use_free_cpus() -> None:
    hosts = [host("a", 4, cpus_free=8), host("b", 0, cpus_free=3)]
    cpu3 = resources_for(0, 3, CONFIG)
    assert place(hosts, cpu3).host == "b"
    assert place(hosts, cpu3).gpus == ()
    assert place(hosts, resources_for(0, 5, CONFIG)).host == "a"
    with pytest.raises(ApiError) as err:
        place(hosts, resources_for(0, 9, CONFIG))
    assert err.value.message == "no host has 9 free CPUs (most free on one host: 8)"


def test_never_two_notebooks_on_one_gpu() -> None:
    """Placing one request after another, consuming what each took, never reuses a GPU."""
    hosts = {name: host(name, n) for name, n in [("a", 3), ("b", 5), ("c", 2)]}
    taken: list[str] = []
    for wanted in itertools.cycle([2, 1, 3]):
        try:
            chosen = place(list(hosts.values()), gpus(wanted))
        except ApiError:
            break
        assert len(chosen.gpus) == wanted
        taken.extend(chosen.gpus)
        old = hosts[chosen.host]
        left = tuple(g for g in old.free_gpus if g.uuid not in chosen.gpus)
        hosts[chosen.host] = HostCapacity(old.id, old.cpus_free, left)
    assert len(taken) == len(set(taken))
    assert len(taken) >= 8
