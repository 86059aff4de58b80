"""What request bodies and query parameters are refused at the door: a NUL byte bound for a
container's environment or command line (400 naming the field), non-finite or out-of-range
usage periods (400 naming the parameter), and bodies not declared JSON (415), on the scheduler
and on the agent. Bodyless requests are not asked for a Content-Type."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from agent.app import Agent as AgentProcess
from common.auth import sign
from tests.component.conftest import Agent, Harness, Tokens
from tests.unit.test_agent_app import SECRET

JSON = {"Content-Type": "application/json"}

# ---------------------------------------------------------------- NUL bytes


@pytest.mark.parametrize(
    ("envvars", "field"),
    [
        ({"GREETING": "hello\u0000world"}, "$.envvars[...]"),
        ({"GREET\u0000ING": "hello"}, "`key` in `$.envvars`"),
        # `$` in a pattern also matches before a final newline; names must not end in one.
        ({"GREETING\n": "hello"}, "`key` in `$.envvars`"),
    ],
)
async def test_a_nul_in_an_env_var_is_400_naming_the_field(
    harness: Harness, project: Tokens, host: Agent, envvars: dict[str, str], field: str
) -> None:
    before = harness.snapshot()
    reply = await project.run(expect=400, envvars=envvars)
    assert reply.code == "invalid_request"
    assert field in reply.json["message"], reply.text
    assert harness.snapshot() == before


async def test_newlines_in_env_values_are_kept(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    reply = await project.run(envvars={"CERT": "line one\nline two\n"})
    assignments = await host.assignments()
    [item] = [a for a in assignments["items"] if a["notebook"] == reply.json["id"]]
    assert item["env"]["CERT"] == "line one\nline two\n"


async def test_a_nul_in_an_exec_argument_is_400_naming_it(
    harness: Harness, project: Tokens, agent_server: AgentProcess
) -> None:
    body = {"command": ["sh", "-c", "echo \u0000"]}
    reply = await harness.call(
        "POST", "/v1/notebooks/nb-any/exec", token=project.operator, body=body
    )
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert "$.command[2]" in reply.json["message"]

    # The agent refuses it the same way (its scheduler never sends one).
    status, answer = await agent_post(agent_server, "/v1/notebooks/nb1/exec", body, JSON)
    assert (status, answer["code"]) == (400, "invalid_request")
    assert "$.command[2]" in answer["message"]


# ---------------------------------------------------------------- usage periods

BAD_TIMES = ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1e18", "-1e18", "253402300800"]


@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize("raw", [*BAD_TIMES, "0001-01-01T00:00:00+05:00"])
async def test_non_finite_or_out_of_range_usage_times_are_400(
    harness: Harness, project: Tokens, name: str, raw: str
) -> None:
    other = "to=2023-12-01" if name == "from" else "from=2023-11-01"
    for path, token in (
        ("/v1/projects/alpha/usage", project.read),
        ("/v1/admin/usage", harness.admin_token),
    ):
        reply = await harness.call("GET", f"{path}?{name}={raw}&{other}", token=token)
        assert (reply.status, reply.code) == (400, "invalid_request"), (path, reply.text)
        assert f"`{name}`" in reply.json["message"]
        assert reply.json["detail"] == {"field": name}


async def test_extreme_but_valid_usage_times_are_answered(
    harness: Harness, project: Tokens
) -> None:
    reply = await harness.call(
        "GET", "/v1/projects/alpha/usage?from=0001-01-01&to=9999-12-31", token=project.read
    )
    assert reply.status == 200, reply.text
    assert reply.json["total"]["minutes"] == 0


# ---------------------------------------------------------------- Content-Type

#: Every endpoint that decodes a JSON body: (method, route, who calls it).
JSON_ENDPOINTS = [
    ("POST", "/v1/notebooks", "operator"),
    ("POST", "/v1/notebooks/{id}/exec", "operator"),
    ("POST", "/v1/notebooks/{id}/fork", "operator"),
    ("PUT", "/v1/notebooks/{id}/ssh-keys", "operator"),
    ("POST", "/v1/notebooks/{id}/datasync", "operator"),
    ("PUT", "/v1/notebooks/{id}", "operator"),
    ("POST", "/v1/tokens", "operator"),
    ("POST", "/v1/datastores", "operator"),
    ("POST", "/v1/admin/projects", "admin"),
    ("POST", "/v1/admin/tokens", "admin"),
    ("PATCH", "/v1/admin/projects/{name}/quota", "admin"),
    ("POST", "/v1/agents/register", "agent"),
    ("POST", "/v1/agents/heartbeat", "agent"),
    ("POST", "/v1/agents/transitions", "agent"),
    ("POST", "/v1/agents/usage", "agent"),
    ("POST", "/v1/agents/snapshots", "agent"),
    ("POST", "/v1/agents/progress", "agent"),
    ("POST", "/v1/agents/authorize", "agent"),
]
#: Actions that take no body (and so ask for no Content-Type).
BODYLESS = [
    ("POST", "/v1/notebooks/{id}/start"),
    ("POST", "/v1/notebooks/{id}/stop"),
    ("POST", "/v1/admin/hosts/{id}/cordon"),
    ("POST", "/v1/admin/hosts/{id}/drain"),
    ("POST", "/v1/admin/hosts/{id}/uncordon"),
]

#: The web console's forms (form-encoded, each with its CSRF token: test_console.py).
FORMS = [
    ("POST", "/console/sign-in"),
    ("POST", "/console/sign-out"),
    ("POST", "/console/notebooks/new"),
    ("POST", "/console/notebooks/{id}/fork"),
    ("POST", "/console/notebooks/{id}/{action}"),
    ("POST", "/console/tokens"),
    ("POST", "/console/tokens/{id}/delete"),
    ("POST", "/console/datastores"),
    ("POST", "/console/datastores/{alias}/delete"),
    ("POST", "/console/hosts/{id}/{action}"),
    ("POST", "/console/projects"),
    ("POST", "/console/projects/{name}/quota"),
]


async def test_every_route_that_may_take_a_body_is_listed(harness: Harness) -> None:
    """A new POST, PUT or PATCH route belongs in one of the lists above (and so is tested)."""
    routes = {
        (route.method, route.resource.canonical)
        for route in harness.app.router.routes()
        if route.method in ("POST", "PUT", "PATCH") and route.resource is not None
    }
    assert routes == {(m, p) for m, p, _ in JSON_ENDPOINTS} | set(BODYLESS) | set(FORMS)


def credentials(
    harness: Harness, project: Tokens, who: str, method: str, path: str, data: bytes
) -> dict[str, str]:
    if who == "agent":
        return sign(harness.agent("h1").secret, "h1", method, path, data, now=harness.clock())
    if who == "nobody":
        return {}
    token = harness.admin_token if who == "admin" else project.operator
    return {"Authorization": f"Bearer {token}"}


async def call_as(
    harness: Harness,
    project: Tokens,
    who: str,
    method: str,
    path: str,
    content_type: str | None,
    data: bytes = b"{}",
) -> tuple[int, dict[str, Any]]:
    """``who`` (operator, admin, agent, nobody) sends ``data`` with exactly ``content_type``
    (``None``: no Content-Type header at all)."""
    path = path.format(id="nb-any", name="alpha")
    headers = credentials(harness, project, who, method, path, data)
    if content_type is not None:
        headers["Content-Type"] = content_type
    assert harness.client is not None
    async with harness.client.request(
        method, path, data=data, headers=headers, skip_auto_headers=["Content-Type"]
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(("method", "path", "who"), JSON_ENDPOINTS)
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_every_json_endpoint_answers_415_to_a_body_not_declared_json(
    harness: Harness, project: Tokens, method: str, path: str, who: str, content_type: str | None
) -> None:
    harness.agent("h1")  # its secret is stored in the database before the snapshot
    before = harness.snapshot()
    status, answer = await call_as(harness, project, who, method, path, content_type)
    assert (status, answer["code"]) == (415, "unsupported_media_type"), answer
    assert "application/json" in answer["message"]
    assert harness.snapshot() == before


@pytest.mark.parametrize(("method", "path", "who"), JSON_ENDPOINTS)
async def test_json_with_a_utf8_charset_gets_past_the_media_type(
    harness: Harness, project: Tokens, method: str, path: str, who: str
) -> None:
    # ``{}`` is not a valid body for most of them: what matters is that it was decoded.
    status, answer = await call_as(
        harness, project, who, method, path, "application/json; charset=UTF-8"
    )
    assert status != 415, answer


@pytest.mark.parametrize("path", ["/v1/notebooks", "/v1/admin/projects", "/v1/agents/heartbeat"])
async def test_credentials_are_checked_before_the_media_type(
    harness: Harness, project: Tokens, path: str
) -> None:
    status, answer = await call_as(harness, project, "nobody", "POST", path, "text/plain")
    assert (status, answer["code"]) == (401, "unauthenticated")


async def test_a_notebook_created_with_a_charset_and_bodyless_actions_work(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    status, created = await call_as(
        harness,
        project,
        "operator",
        "POST",
        "/v1/notebooks",
        "application/json; charset=utf-8",
        b'{"framework": "conda", "editor": "jupyterlab"}',
    )
    assert status == 201, created
    notebook = created["id"]
    # No body and no Content-Type: nothing to decode, nothing to refuse.
    for action, expect in (("stop", 202), ("start", 409)):
        status, answer = await call_as(
            harness, project, "operator", "POST", f"/v1/notebooks/{notebook}/{action}", None, b""
        )
        assert status == expect, answer
    await host.report(notebook, "STOPPED")
    reply = await project.action(notebook, "start")
    assert reply.status == 202, reply.text
    reply = await project.action(notebook, "delete")
    assert reply.status == 202, reply.text


async def test_an_empty_body_is_400_whatever_its_content_type(
    harness: Harness, project: Tokens
) -> None:
    status, answer = await call_as(
        harness, project, "operator", "POST", "/v1/notebooks", "text/plain", b""
    )
    assert (status, answer["code"]) == (400, "invalid_request")
    assert "empty" in answer["message"]


async def agent_post(
    agent: AgentProcess, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            agent.agent_url + path,
            data=data,
            headers={**sign(SECRET, "h1", "POST", path, data), **headers},
            skip_auto_headers=["Content-Type"],
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
async def test_the_agents_exec_answers_415_to_a_body_not_declared_json(
    agent_server: AgentProcess, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, answer = await agent_post(
        agent_server, "/v1/notebooks/nb1/exec", {"command": ["true"]}, headers
    )
    assert (status, answer["code"]) == (415, "unsupported_media_type"), answer
    # Declared JSON it is decoded and run (no such container here: 404).
    status, answer = await agent_post(
        agent_server,
        "/v1/notebooks/nb1/exec",
        {"command": ["true"]},
        {"Content-Type": "application/json; charset=utf-8"},
    )
    assert (status, answer["code"]) == (404, "not_found"), answer
