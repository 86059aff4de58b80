"""Who may call what: project tokens, roles, the admin token, signed agents."""

from __future__ import annotations

import json

from common.auth import sign
from tests.component.conftest import Agent, Harness, Tokens


async def test_user_api_needs_a_known_token(harness: Harness, project: Tokens) -> None:
    for token in (None, "nbf_not-a-real-token"):
        for method, path in [("GET", "/v1/notebooks"), ("GET", "/v1/catalog")]:
            reply = await harness.call(method, path, token=token)
            assert (reply.status, reply.code) == (401, "unauthenticated"), reply.text
    reply = await harness.call("GET", "/v1/notebooks", headers={"Authorization": "Basic abc"})
    assert reply.status == 401


async def test_other_projects_notebooks_do_not_exist(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    other = await harness.project("beta")
    nb = (await project.run()).json
    before = harness.snapshot()
    for method, suffix in [("GET", ""), ("GET", "/history"), ("POST", "/stop"), ("DELETE", "")]:
        reply = await harness.call(
            method, f"/v1/notebooks/{nb['id']}{suffix}", token=other.operator
        )
        assert (reply.status, reply.code) == (404, "not_found")
    listed = await harness.call("GET", "/v1/notebooks", token=other.read)
    assert listed.json["items"] == []
    assert harness.snapshot() == before


async def test_read_role_cannot_change_anything(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    before = harness.snapshot()
    for action in ("stop", "start", "delete"):
        reply = await project.action(nb["id"], action, token=project.read)
        assert (reply.status, reply.code) == (403, "forbidden"), action
    reply = await harness.call(
        "POST",
        "/v1/notebooks",
        token=project.read,
        body={"framework": "conda", "editor": "jupyterlab"},
    )
    assert reply.status == 403
    assert harness.snapshot() == before
    assert (
        await harness.call("GET", f"/v1/notebooks/{nb['id']}", token=project.read)
    ).status == 200


async def test_admin_endpoints_need_the_admin_token(harness: Harness, project: Tokens) -> None:
    endpoints = [
        ("GET", "/v1/admin/projects", None),
        ("POST", "/v1/admin/projects", {"name": "gamma"}),
        ("POST", "/v1/admin/tokens", {"project": "alpha"}),
        ("GET", "/v1/admin/hosts", None),
    ]
    for method, path, body in endpoints:
        assert (await harness.call(method, path, body=body)).status == 401
        reply = await harness.call(method, path, token=project.operator, body=body)
        assert (reply.status, reply.code) == (403, "forbidden"), path
    # and the admin token does not reach the user API
    reply = await harness.call("GET", "/v1/notebooks", token=harness.admin_token)
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_admin_projects_and_tokens(harness: Harness) -> None:
    admin = harness.admin_token
    assert harness.admin_token.startswith("nba_")
    first = await harness.call("POST", "/v1/admin/projects", token=admin, body={"name": "p1"})
    assert first.status == 201 and first.json["name"] == "p1"
    again = await harness.call("POST", "/v1/admin/projects", token=admin, body={"name": "p1"})
    assert (again.status, again.code) == (409, "conflict")
    bad = await harness.call("POST", "/v1/admin/projects", token=admin, body={"name": "Bad Name"})
    assert bad.status == 400 and "$.name" in bad.json["message"]
    listed = await harness.call("GET", "/v1/admin/projects", token=admin)
    assert [p["name"] for p in listed.json["items"]] == ["p1"]

    missing = await harness.call("POST", "/v1/admin/tokens", token=admin, body={"project": "nope"})
    assert (missing.status, missing.code) == (404, "not_found")
    made = await harness.call(
        "POST", "/v1/admin/tokens", token=admin, body={"project": "p1", "role": "read"}
    )
    assert made.status == 201 and made.json["role"] == "read"
    token = made.json["token"]
    assert token.startswith("nbf_")
    # only the digest is stored
    assert token not in json.dumps(harness.snapshot(), default=str)
    assert (await harness.call("GET", "/v1/notebooks", token=token)).status == 200


async def test_unsigned_and_badly_signed_agent_requests_are_401(harness: Harness) -> None:
    agent = harness.agent("h1")
    body = json.dumps({"gpus": []}).encode()
    path = "/v1/agents/heartbeat"

    unsigned = await harness.call("POST", path, data=body)
    assert (unsigned.status, unsigned.code) == (401, "unauthenticated")

    wrong_secret = sign(b"not-the-secret", "h1", "POST", path, body, now=harness.clock())
    assert (await harness.call("POST", path, data=body, headers=wrong_secret)).status == 401

    tampered = sign(agent.secret, "h1", "POST", path, body, now=harness.clock())
    reply = await harness.call("POST", path, data=body + b" ", headers=tampered)
    assert reply.status == 401

    other_path = sign(agent.secret, "h1", "POST", "/v1/agents/usage", body, now=harness.clock())
    assert (await harness.call("POST", path, data=body, headers=other_path)).status == 401

    unknown_host = sign(agent.secret, "h9", "POST", path, body, now=harness.clock())
    assert (await harness.call("POST", path, data=body, headers=unknown_host)).status == 401

    escaping = sign(agent.secret, "../admin.token", "POST", path, body, now=harness.clock())
    assert (await harness.call("POST", path, data=body, headers=escaping)).status == 401


async def test_stale_and_replayed_agent_requests_are_401(harness: Harness) -> None:
    agent = harness.agent("h1")
    stale = await agent.call("POST", "/v1/agents/heartbeat", {}, now=harness.clock() - 301)
    assert stale.status == 401 and "stale" in stale.json["message"]
    future = await agent.call("POST", "/v1/agents/heartbeat", {}, now=harness.clock() + 301)
    assert future.status == 401

    body = b"{}"
    headers = agent_headers = sign(
        agent.secret, "h1", "POST", "/v1/agents/heartbeat", body, now=harness.clock()
    )
    headers["Content-Type"] = "application/json"
    first = await harness.call("POST", "/v1/agents/heartbeat", data=body, headers=headers)
    assert first.status == 200
    replay = await harness.call("POST", "/v1/agents/heartbeat", data=body, headers=agent_headers)
    assert replay.status == 401 and "replayed" in replay.json["message"]


async def test_agent_signature_is_not_a_user_token(harness: Harness, host: Agent) -> None:
    reply = await host.call("GET", "/v1/notebooks")
    assert reply.status == 401
