"""The agent's GET /metrics (issue 14): what the host's GPUs do, by the notebook holding
them, and what its notebooks' workspaces take; parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from agent.disk import WorkspaceMeter
from agent.gpus import GpuSnapshot
from agent.metrics import SyncMeter, render
from agent.runtime import ContainerUsage
from common.states import NotebookState as S
from common.wire import GpuInfo, WorkspaceUse
from tests.fakes.runtime import FakeRuntime
from tests.unit.test_agent_app import (
    agent_config,
    agent_for,
    assignment,
    eventually,
    fake_scheduler,
    url_of,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _gpu(index: int, utilization: int, used_mb: int, power: float | None) -> GpuInfo:
    return GpuInfo(
        uuid=f"GPU-{index}",
        index=index,
        model="NVIDIA H100",
        memory_total_mb=81920,
        memory_used_mb=used_mb,
        utilization_pct=utilization,
        power_w=power,
    )


def test_series_by_notebook_gpu_and_workspace() -> None:
    gpus = GpuSnapshot(gpus=[_gpu(0, 87, 2048, 312.5), _gpu(1, 3, 512, None), _gpu(2, 0, 0, 61.0)])
    assignments = {
        "nb1": assignment(notebook="nb1", project="vision", gpus=["GPU-0", "GPU-1"]),
        "nb2": assignment(notebook="nb2", project="nlp", gpus=[]),
    }
    meter = WorkspaceMeter(lambda: 1.0)
    meter._latest["nb2"] = WorkspaceUse(notebook="nb2", used_bytes=4096, measured_at=1.0)
    usage = {
        "nb1": ContainerUsage(cpu_seconds=12.5, memory_working_set_bytes=3 << 30),
        # Stale: a container of a notebook no longer assigned here is not reported.
        "gone": ContainerUsage(cpu_seconds=1.0, memory_working_set_bytes=1),
    }
    syncs = SyncMeter()
    syncs.synced("restore", 2.5, 1 << 20)
    syncs.synced("checkpoint", 0.2, 0)
    syncs.synced("checkpoint", 0.4, 4096)
    body, content_type = render(
        gpus, assignments, meter, usage, saved_ago={"nb1": 125.0, "gone": 1.0}, syncs=syncs
    )
    assert content_type.startswith("text/plain; version=")
    got = _samples(body.decode())

    def held(name: str, gpu: str) -> float | None:
        labels = {"notebook": "nb1", "project": "vision", "gpu": gpu, "model": "NVIDIA H100"}
        return got.get((name, tuple(sorted(labels.items()))))

    assert held("nbfleet_notebook_gpu_utilization_ratio", "GPU-0") == 0.87
    assert held("nbfleet_notebook_gpu_memory_used_bytes", "GPU-0") == 2048 * 1024 * 1024
    assert held("nbfleet_notebook_gpu_power_watts", "GPU-0") == 312.5
    assert held("nbfleet_notebook_gpu_utilization_ratio", "GPU-1") == 0.03
    # A board that does not report power has no power series, rather than a made-up zero.
    assert held("nbfleet_notebook_gpu_power_watts", "GPU-1") is None
    # GPU-2 is nobody's: only in the host's series.
    notebook_gpus = {
        dict(labels)["gpu"] for (name, labels) in got if name.startswith("nbfleet_notebook_gpu")
    }
    assert notebook_gpus == {"GPU-0", "GPU-1"}
    host = (("gpu", "GPU-2"), ("model", "NVIDIA H100"))
    assert got[("nbfleet_gpu_power_watts", host)] == 61.0
    assert got[("nbfleet_gpu_utilization_ratio", host)] == 0.0
    nb1 = (("notebook", "nb1"), ("project", "vision"))
    assert got[("nbfleet_notebook_cpu_seconds_total", nb1)] == 12.5
    assert got[("nbfleet_notebook_memory_working_set_bytes", nb1)] == 3 << 30
    assert got[("nbfleet_notebook_seconds_since_checkpoint", nb1)] == 125.0
    assert not any(dict(labels).get("notebook") == "gone" for _, labels in got)
    # The syncs so far, by kind.
    assert got[("nbfleet_sync_duration_seconds_count", (("kind", "checkpoint"),))] == 2
    assert abs(got[("nbfleet_sync_duration_seconds_sum", (("kind", "checkpoint"),))] - 0.6) < 1e-9
    assert got[("nbfleet_sync_bytes_total", (("kind", "checkpoint"),))] == 4096
    assert got[("nbfleet_sync_bytes_total", (("kind", "restore"),))] == 1 << 20
    restore_le_5 = (("kind", "restore"), ("le", "5.0"))
    assert got[("nbfleet_sync_duration_seconds_bucket", restore_le_5)] == 1
    workspace = "nbfleet_notebook_workspace_bytes"
    assert got[(workspace, (("notebook", "nb2"), ("project", "nlp")))] == 4096
    assert not any(name == workspace and dict(labels)["notebook"] == "nb1" for name, labels in got)


async def test_scrapes_need_the_metrics_token(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("nbm_the-token\n")
    scheduler, server = await fake_scheduler()
    config = msgspec.structs.replace(
        agent_config(tmp_path, url_of(server)), metrics_token_file=str(token_file)
    )
    runtime = FakeRuntime()
    agent = agent_for(config, runtime)
    await agent.start()
    try:
        scheduler.assignments = [assignment(gpus=["GPU-fake-0"])]
        scheduler.bump()
        await eventually(
            "RUNNING", lambda: any(t.state == S.RUNNING for t in scheduler.transitions)
        )
        async with aiohttp.ClientSession() as session:
            url = f"{agent.agent_url}/metrics"
            for headers in ({}, {"Authorization": "Bearer nbm_another"}):
                async with session.get(url, headers=headers) as response:
                    assert response.status == 401, headers
            good = {"Authorization": "Bearer nbm_the-token"}
            async with session.get(url, headers=good) as response:
                assert response.status == 200
                got = _samples(await response.text())
        labels = {"notebook": "nb1", "project": "p", "gpu": "GPU-fake-0"}
        labels["model"] = "NVIDIA H100 80GB HBM3"
        key = ("nbfleet_notebook_gpu_utilization_ratio", tuple(sorted(labels.items())))
        assert got[key] == 0.0
        # The fake runtime's container: its CPU and memory as the runtime said.
        nb1 = (("notebook", "nb1"), ("project", "p"))
        assert got[("nbfleet_notebook_cpu_seconds_total", nb1)] == 1.5
        assert got[("nbfleet_notebook_memory_working_set_bytes", nb1)] == 64 << 20
        # Its workspace was restored (empty: a first start) before it ran, and it is running.
        assert got[("nbfleet_sync_duration_seconds_count", (("kind", "restore"),))] == 1
        assert got[("nbfleet_notebook_seconds_since_checkpoint", nb1)] >= 0
    finally:
        await agent.stop()
        await server.close()


async def test_without_a_token_metrics_are_off(tmp_path: Path) -> None:
    scheduler, server = await fake_scheduler()
    agent = agent_for(agent_config(tmp_path, url_of(server)), FakeRuntime())
    await agent.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{agent.agent_url}/metrics", headers={"Authorization": "Bearer x"}
            ) as response:
                assert response.status == 404
                assert "metrics_token_file" in (await response.json())["message"]
    finally:
        await agent.stop()
        await server.close()
    await asyncio.sleep(0)
