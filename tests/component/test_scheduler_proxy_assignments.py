"""What the agents' editor proxies need from the scheduler (public or not, the editor's base
URL) and what they report back (activity, carried by heartbeats and written in batches)."""

from __future__ import annotations

from typing import Any

from scheduler.api.context import CONTEXT
from tests.component.conftest import Agent, Harness, Tokens
from tests.component.test_scheduler_snapshots import report_snapshot, snapshot


def activity(notebook: str, at: float, bytes_in: int, bytes_out: int) -> dict[str, Any]:
    return {
        "notebook": notebook,
        "last_activity_at": at,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }


def stored_activity(harness: Harness, notebook: str) -> tuple[Any, Any]:
    """``(last_activity_at, proxied_bytes)`` as committed in the database."""
    rows = harness.committed(
        "SELECT last_activity_at, proxied_bytes FROM notebooks WHERE id = ?", (notebook,)
    )
    return next(iter(rows), None)


async def flush(harness: Harness) -> None:
    await harness.app[CONTEXT].activity.flush()


async def test_unsecure_http_is_stored_shown_and_sent(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    public = (await project.run(unsecure_http=True)).json
    private = (await project.run(gpu=1)).json
    assert (public["unsecure_http"], private["unsecure_http"]) == (True, False)
    assert (await project.get(public["id"]))["unsecure_http"] is True
    items = {a["notebook"]: a for a in (await host.assignments())["items"]}
    assert items[public["id"]]["unsecure_http"] is True
    assert items[private["id"]]["unsecure_http"] is False

    # It stays public across a stop and a start.
    await host.report(public["id"], "RUNNING")
    await project.action(public["id"], "stop")
    await host.report(public["id"], "STOPPED")
    await project.action(public["id"], "start")
    [again] = [a for a in (await host.assignments())["items"] if a["notebook"] == public["id"]]
    assert (again["generation"], again["unsecure_http"]) == (2, True)
    bad = await project.run(expect=400, unsecure_http="yes")
    assert "$.unsecure_http" in bad.json["message"]


async def test_a_fork_of_a_public_notebook_is_public(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    for public in (True, False):
        source = (await project.run(gpu=0, cpu=1, unsecure_http=public)).json
        await report_snapshot(host, source["id"], snapshot(f"s-{public}", harness.clock()))
        fork = await harness.call(
            "POST",
            f"/v1/notebooks/{source['id']}/fork",
            token=project.operator,
            body={"backup": f"s-{public}"},
        )
        assert fork.status == 201, fork.text
        assert fork.json["unsecure_http"] is public


async def test_base_url_is_filled_and_sent_where_the_editor_uses_it(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    lab = (await project.run()).json
    code = (await project.run(editor="vscode", gpu=1)).json
    items = {a["notebook"]: a for a in (await host.assignments())["items"]}
    prefix = f"/notebooks/{lab['id']}/"
    # JupyterLab is told its base URL, so the proxy forwards paths as they are...
    assert items[lab["id"]]["base_url"] == prefix
    assert f"--ServerApp.base_url={prefix}" in items[lab["id"]]["command"]
    # ...code-server serves at its root: the proxy strips the prefix for it.
    assert items[code["id"]]["base_url"] == "/"
    assert not any("notebooks" in part for part in items[code["id"]]["command"])


async def test_activity_from_heartbeats_is_shown_at_once_and_written_in_batches(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "RUNNING")
    assert (await project.get(nb["id"]))["last_activity_at"] is None
    before = harness.snapshot()

    t1 = harness.clock() - 4
    reply = await host.heartbeat(activity=[activity(nb["id"], t1, 1_000, 250_000)])
    assert reply.status == 200 and reply.json["known"] is True
    assert harness.snapshot() == before  # a heartbeat writes nothing
    got = await project.get(nb["id"])
    assert (got["last_activity_at"], got["proxied_bytes"]) == (t1, 251_000)
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert listed.json["items"][0]["proxied_bytes"] == 251_000

    await flush(harness)
    assert stored_activity(harness, nb["id"]) == (t1, 251_000)
    await flush(harness)  # nothing pending: no transaction at all
    assert stored_activity(harness, nb["id"]) == (t1, 251_000)

    # The latest byte count wins; the last activity never goes back (a late heartbeat).
    await host.heartbeat(activity=[activity(nb["id"], t1 - 60, 10, 20)])
    got = await project.get(nb["id"])
    assert (got["last_activity_at"], got["proxied_bytes"]) == (t1, 30)
    await flush(harness)
    assert stored_activity(harness, nb["id"]) == (t1, 30)

    await harness.restart()
    got = await project.get(nb["id"])
    assert (got["last_activity_at"], got["proxied_bytes"]) == (t1, 30)


async def test_activity_only_counts_from_the_host_running_the_notebook(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    other = harness.agent("h2")
    await other.register(gpus=0)
    await other.heartbeat(activity=[activity(nb["id"], harness.clock(), 5, 5)])
    assert (await project.get(nb["id"]))["last_activity_at"] is None
    stranger = harness.agent("h3")  # never registered: told to register, nothing recorded
    reply = await stranger.heartbeat(activity=[activity(nb["id"], harness.clock(), 5, 5)])
    assert reply.json["known"] is False
    await flush(harness)
    assert stored_activity(harness, nb["id"]) == (None, 0)

    # Reported, then the notebook stops before the flush: nothing is written for it.
    await host.report(nb["id"], "RUNNING")
    await host.heartbeat(activity=[activity(nb["id"], harness.clock(), 7, 7)])
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    await flush(harness)
    assert stored_activity(harness, nb["id"]) == (None, 0)


async def test_pending_activity_is_written_when_the_scheduler_shuts_down(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.heartbeat(activity=[activity(nb["id"], harness.clock(), 1, 2)])
    await harness.restart()
    assert stored_activity(harness, nb["id"]) == (harness.clock(), 3)
