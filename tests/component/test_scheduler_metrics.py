"""GET /metrics (issue 14): Prometheus exposition of the scheduler's series, parsed with
prometheus_client's own parser, behind the scrape token or the admin token. Both databases."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from scheduler.secrets import ensure_metrics_token
from tests.component.conftest import Agent, Harness, Tokens

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(harness: Harness, token: str) -> Samples:
    reply = await harness.call("GET", "/metrics", token=token)
    assert reply.status == 200, reply.text
    assert reply.content_type == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scrapes_need_the_metrics_or_the_admin_token(
    harness: Harness, project: Tokens
) -> None:
    reply = await harness.call("GET", "/metrics")
    assert (reply.status, reply.code) == (401, "unauthenticated")
    for token in (project.operator, project.read, "nbm_not-the-token"):
        reply = await harness.call("GET", "/metrics", token=token)
        assert (reply.status, reply.code) == (401, "unauthenticated"), token
    assert await _scrape(harness, ensure_metrics_token(harness.config))
    assert await _scrape(harness, harness.admin_token)


async def test_the_series_say_what_the_fleet_and_this_process_did(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    token = ensure_metrics_token(harness.config)
    before = await _scrape(harness, token)
    await harness.agent("h2").register(gpus=1)
    # h1 has 2 GPUs, h2 one: two notebooks of 2 GPUs, the second waits.
    running = (await project.run(gpu=2)).json
    queued = (await project.run(gpu=2)).json
    assert (running["state"], queued["state"]) == ("STARTING", "QUEUED")
    harness.clock.advance(7)
    await host.report(running["id"], "RUNNING")
    await host.usage(running["id"], 5)
    harness.clock.advance(30)
    after = await _scrape(harness, token)

    # What the database holds.
    assert _value(after, "nbfleet_notebooks", project="alpha", state="RUNNING") == 1
    assert _value(after, "nbfleet_notebooks", project="alpha", state="QUEUED") == 1
    assert _value(after, "nbfleet_queue_length") == 1
    assert _value(after, "nbfleet_queue_oldest_wait_seconds") == 37
    assert _value(after, "nbfleet_hosts", state="ready", intent="open") == 2
    assert _value(after, "nbfleet_gpus", model="A100") == 3
    assert _value(after, "nbfleet_gpus_free", model="A100") == 1
    assert _value(after, "nbfleet_billed_gpu_minutes_total", project="alpha", model="A100") == 10

    # What this process saw (the registry is the process's: compare with before).
    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("nbfleet_placements_total", source="request") == 1
    assert delta("nbfleet_notebook_start_duration_seconds_count", status="running") == 1
    assert delta("nbfleet_notebook_start_duration_seconds_sum", status="running") == 7
    assert (
        delta(
            "nbfleet_request_duration_seconds_count",
            code="201",
            handler="/v1/notebooks",
            method="POST",
        )
        == 2
    )
    assert (
        delta(
            "nbfleet_request_duration_seconds_count",
            code="200",
            handler="/v1/agents/transitions",
            method="POST",
        )
        == 1
    )
    assert _value(after, "process_cpu_seconds_total") > 0

    # The queued one is placed once room frees up: a placement from the queue, and its wait.
    assert (await project.action(running["id"], "stop")).status == 202
    await host.report(running["id"], "STOPPED", reason="stopped")
    for agent in (host, harness.agent("h2")):
        assert (await agent.heartbeat()).status == 200
    await harness.tick()
    last = await _scrape(harness, token)
    assert (
        _value(last, "nbfleet_placements_total", source="queue")
        - _value(before, "nbfleet_placements_total", source="queue")
        == 1
    )
    assert (
        _value(last, "nbfleet_queue_wait_seconds_count")
        - _value(before, "nbfleet_queue_wait_seconds_count")
        == 1
    )
    assert _value(last, "nbfleet_queue_length") == 0


async def test_a_notebooks_gpus_say_what_its_host_last_reported(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    created = (await project.run(gpu=1)).json
    [reserved] = created["gpus"]
    # The reply to the run carries the GPU's figures as the registration stored them.
    assert (reserved["utilization_pct"], reserved["memory_used_mb"]) == (0, 0)
    beat = [
        {
            "uuid": g["uuid"],
            "index": g["index"],
            "model": "A100",
            "memory_total_mb": 81920,
            "memory_used_mb": 30_000 if g["uuid"] == reserved["uuid"] else 0,
            "utilization_pct": 91 if g["uuid"] == reserved["uuid"] else 0,
        }
        for g in ({"uuid": f"GPU-h1-{i}", "index": i} for i in range(2))
    ]
    assert (await host.heartbeat(gpus=beat)).status == 200
    await harness.tick()  # heartbeats are written in batches
    [gpu] = (await project.get(created["id"]))["gpus"]
    assert gpu == {
        "uuid": reserved["uuid"],
        "model": "A100",
        "index": reserved["index"],
        "utilization_pct": 91,
        "memory_used_mb": 30_000,
        "memory_total_mb": 81920,
    }
