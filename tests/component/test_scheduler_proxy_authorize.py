"""``POST /v1/agents/authorize``: may this token open this notebook's editor, asked by the
agent whose proxy serves it."""

from __future__ import annotations

from typing import Any

from tests.component.conftest import Agent, Harness, Tokens


async def authorize(agent: Agent, notebook: str, token: str) -> dict[str, Any]:
    reply = await agent.call("POST", "/v1/agents/authorize", {"notebook": notebook, "token": token})
    assert reply.status == 200, reply.text
    return reply.json


async def test_own_project_tokens_of_both_roles_may_open(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "RUNNING")
    assert await authorize(host, nb["id"], project.operator) == {
        "allowed": True,
        "role": "operator",
        "reason": "",
    }
    assert await authorize(host, nb["id"], project.read) == {
        "allowed": True,
        "role": "read",
        "reason": "",
    }


async def test_refusals_say_why_for_people(harness: Harness, project: Tokens, host: Agent) -> None:
    nb = (await project.run(labels={"team": "cv"})).json
    other = await harness.project("beta")
    nlp = await harness.call(
        "POST",
        "/v1/tokens",
        token=project.operator,
        body={"role": "read", "label_selector": {"team": "nlp"}},
    )
    assert nlp.status == 201, nlp.text
    cases = {
        other.operator: "token of another project",
        nlp.json["token"]: "token limited to team=nlp",
        "nbf_never-issued": "unknown or deleted token",
        "": "unknown or deleted token",
    }
    for token, reason in cases.items():
        assert await authorize(host, nb["id"], token) == {
            "allowed": False,
            "role": None,
            "reason": reason,
        }, token
    refused = await authorize(host, "no-such-notebook", project.operator)
    assert refused["allowed"] is False and "does not exist" in refused["reason"]


async def test_a_matching_selector_may_open(harness: Harness, project: Tokens, host: Agent) -> None:
    nb = (await project.run(labels={"team": "cv", "env": "dev"})).json
    scoped = await harness.call(
        "POST",
        "/v1/admin/tokens",
        token=harness.admin_token,
        body={"project": "alpha", "role": "read", "label_selector": {"team": "cv"}},
    )
    reply = await authorize(host, nb["id"], scoped.json["token"])
    assert (reply["allowed"], reply["role"]) == (True, "read")


async def test_the_admin_token_never_opens_a_notebook(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    reply = await authorize(host, nb["id"], harness.admin_token)
    assert reply["allowed"] is False and "admin token" in reply["reason"]


async def test_only_the_host_running_the_notebook_may_ask(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    elsewhere = harness.agent("h2")
    await elsewhere.register(gpus=1)
    reply = await authorize(elsewhere, nb["id"], project.operator)
    assert reply == {
        "allowed": False,
        "role": None,
        "reason": f"notebook {nb['id']} does not run on host h2",
    }
    # A stopped notebook runs nowhere: even its last host may not serve it any more.
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED")
    assert (await authorize(host, nb["id"], project.operator))["allowed"] is False


async def test_a_deleted_token_is_refused_at_once(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    created = await harness.call(
        "POST", "/v1/tokens", token=project.operator, body={"role": "read"}
    )
    token = created.json["token"]
    assert (await authorize(host, nb["id"], token))["allowed"] is True  # now remembered
    deleted = await harness.call(
        "DELETE", f"/v1/tokens/{created.json['id']}", token=project.operator
    )
    assert deleted.status == 200, deleted.text
    assert await authorize(host, nb["id"], token) == {
        "allowed": False,
        "role": None,
        "reason": "unknown or deleted token",
    }


async def test_authorize_needs_a_signed_agent_and_a_valid_body(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    body = {"notebook": nb["id"], "token": project.operator}
    unsigned = await harness.call("POST", "/v1/agents/authorize", body=body)
    assert (unsigned.status, unsigned.code) == (401, "unauthenticated")
    as_user = await harness.call("POST", "/v1/agents/authorize", body=body, token=project.operator)
    assert as_user.status == 401
    bad = await host.call("POST", "/v1/agents/authorize", {"notebook": nb["id"]})
    assert bad.status == 400 and "token" in bad.json["message"]
