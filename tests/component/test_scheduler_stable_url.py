"""A notebook's stable URL, ``{scheduler}/notebooks/{id}/``: redirected to the agent that runs
it now, or answered with its state; and the URL the API shows for it."""

from __future__ import annotations

from dataclasses import dataclass

from tests.component.conftest import Harness, Tokens

AGENT_A = "http://gpu-a.example:8471"
AGENT_B = "http://gpu-b.example:8471/"  # a trailing slash is not doubled


@dataclass
class Answer:
    status: int
    location: str | None
    text: str
    headers: dict[str, str]


async def visit(harness: Harness, path: str, method: str = "GET", **headers: str) -> Answer:
    """A browser's request, without following the redirect and without any API token."""
    assert harness.client is not None
    async with harness.client.request(method, path, allow_redirects=False, headers=headers) as resp:
        return Answer(
            resp.status, resp.headers.get("Location"), await resp.text(), dict(resp.headers)
        )


async def running(harness: Harness, project: Tokens) -> str:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    nb = (await project.run()).json
    assert nb["host"] == "a"
    await harness.agent("a").report(nb["id"], "RUNNING", url="http://gpu-a.example:40001/")
    return nb["id"]


async def test_running_notebook_redirects_to_its_agent_keeping_path_and_query(
    harness: Harness, project: Tokens
) -> None:
    nb = await running(harness, project)
    answer = await visit(harness, f"/notebooks/{nb}/lab/tree/a%20b.ipynb?token=nbf_x&reset=1")
    assert answer.status == 307
    # Same path (its encoding as sent) and query, ?token= included so the agent sets its cookie.
    assert answer.location == f"{AGENT_A}/notebooks/{nb}/lab/tree/a%20b.ipynb?token=nbf_x&reset=1"
    assert answer.headers["Cache-Control"] == "no-store"

    root = await visit(harness, f"/notebooks/{nb}/")
    assert (root.status, root.location) == (307, f"{AGENT_A}/notebooks/{nb}/")
    bare = await visit(harness, f"/notebooks/{nb}?token=nbf_x")
    assert (bare.status, bare.location) == (307, f"{AGENT_A}/notebooks/{nb}/?token=nbf_x")


async def test_every_method_and_websocket_upgrades_are_redirected(
    harness: Harness, project: Tokens
) -> None:
    nb = await running(harness, project)
    target = f"{AGENT_A}/notebooks/{nb}/api/kernels"
    for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        answer = await visit(harness, f"/notebooks/{nb}/api/kernels", method)
        assert (answer.status, answer.location) == (307, target), method
    upgrade = await visit(
        harness,
        f"/notebooks/{nb}/api/kernels/k1/channels",
        Connection="Upgrade",
        Upgrade="websocket",
        **{"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )
    assert (upgrade.status, upgrade.location) == (307, f"{target}/k1/channels")


async def test_the_url_follows_the_notebook_to_another_host(
    harness: Harness, project: Tokens
) -> None:
    nb = await running(harness, project)
    url = (await project.get(nb))["url"]
    await project.action(nb, "stop")
    await harness.agent("a").report(nb, "STOPPED")
    await harness.agent("b").register(gpus=1, agent_url=AGENT_B)
    cordoned = await harness.call("POST", "/v1/admin/hosts/a/cordon", token=harness.admin_token)
    assert cordoned.status == 200
    started = await project.action(nb, "start")
    assert started.json["host"] == "b"
    await harness.agent("b").report(nb, "RUNNING", generation=2)

    assert (await project.get(nb))["url"] == url  # same URL, another host
    answer = await visit(harness, f"/notebooks/{nb}/lab")
    assert (answer.status, answer.location) == (
        307,
        f"http://gpu-b.example:8471/notebooks/{nb}/lab",
    )


async def test_a_notebook_that_is_not_running_says_its_state_and_what_to_do(
    harness: Harness, project: Tokens
) -> None:
    nb = await running(harness, project)
    await project.action(nb, "stop")
    stopping = await visit(harness, f"/notebooks/{nb}/lab")
    assert stopping.status == 409 and stopping.location is None
    assert "STOPPING" in stopping.text and "once STOPPED" in stopping.text

    await harness.agent("a").report(nb, "STOPPED")
    stopped = await visit(harness, f"/notebooks/{nb}/lab?token=nbf_x")
    assert stopped.status == 409
    assert stopped.headers["Content-Type"].startswith("text/plain")
    assert f"notebook {nb} is not running: it is STOPPED" in stopped.text
    assert f"nbfleet notebook start {nb}" in stopped.text

    await project.action(nb, "start")  # placed again on a: STARTING
    starting = await visit(harness, f"/notebooks/{nb}/")
    assert (starting.status, starting.headers["Retry-After"]) == (503, "5")
    assert f"notebook {nb} is STARTING" in starting.text

    await harness.agent("a").report(nb, "FAILED", generation=2)
    failed = await visit(harness, f"/notebooks/{nb}/")
    assert failed.status == 409 and "it is FAILED; start it with" in failed.text


async def test_queued_unknown_and_deleted_notebooks(harness: Harness, project: Tokens) -> None:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    await project.run(gpu=1)
    queued = (await project.run(gpu=1)).json
    assert queued["state"] == "QUEUED"
    answer = await visit(harness, f"/notebooks/{queued['id']}/")
    assert answer.status == 503 and "is QUEUED" in answer.text

    unknown = await visit(harness, "/notebooks/no-such-notebook/lab")
    assert (unknown.status, unknown.text) == (404, "notebook no-such-notebook does not exist\n")

    await project.action(queued["id"], "delete")  # it never ran: DELETED at once
    deleted = await visit(harness, f"/notebooks/{queued['id']}/")
    assert deleted.status == 404 and "does not exist" in deleted.text


async def test_the_api_shows_the_stable_url_only_while_running(
    harness: Harness, project: Tokens
) -> None:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    nb = (await project.run()).json
    assert nb["url"] is None  # STARTING
    await harness.agent("a").report(nb["id"], "RUNNING", url="http://gpu-a.example:40001/lab")
    expected = str(harness.client.make_url(f"/notebooks/{nb['id']}/"))
    assert (await project.get(nb["id"]))["url"] == expected
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert [n["url"] for n in listed.json["items"]] == [expected]

    # Behind a reverse proxy, the address people use is the one it reports.
    for headers in (
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "notebooks.example.org"},
        {"Forwarded": 'for=10.0.0.1;proto=https;host="notebooks.example.org"'},
    ):
        shown = await harness.call(
            "GET", f"/v1/notebooks/{nb['id']}", token=project.read, headers=headers
        )
        assert shown.json["url"] == f"https://notebooks.example.org/notebooks/{nb['id']}/"

    stopped = await project.action(nb["id"], "stop")
    assert stopped.json["url"] is None


async def test_a_configured_public_url_is_what_notebook_urls_start_with(
    harness: Harness, project: Tokens
) -> None:
    await harness.agent("a").register(gpus=1, agent_url=AGENT_A)
    nb = (await project.run()).json
    await harness.agent("a").report(nb["id"], "RUNNING", url="http://gpu-a.example:40001/lab")
    harness.config.public_url = "https://notebooks.example.com/"
    shown = await harness.call(
        "GET",
        f"/v1/notebooks/{nb['id']}",
        token=project.read,
        headers={"X-Forwarded-Host": "somewhere.else"},
    )
    assert shown.json["url"] == f"https://notebooks.example.com/notebooks/{nb['id']}/"
