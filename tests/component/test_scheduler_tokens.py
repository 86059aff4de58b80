"""``/v1/tokens``: a project's own tokens, created and deleted by its operators; what the read
role may not do."""

from __future__ import annotations

from typing import Any

from tests.component.conftest import Agent, Harness, Reply, Tokens


async def create(harness: Harness, token: str, expect: int = 201, **body: Any) -> Reply:
    reply = await harness.call("POST", "/v1/tokens", token=token, body=body)
    assert reply.status == expect, reply.text
    return reply


async def test_an_operator_creates_tokens_of_its_own_project(
    harness: Harness, project: Tokens
) -> None:
    created = await create(
        harness,
        project.operator,
        role="read",
        description="for the dashboard",
        label_selector={"team": "cv"},
    )
    body = created.json
    assert body["project"] == "alpha" and body["role"] == "read"
    assert body["token"].startswith("nbf_") and body["label_selector"] == {"team": "cv"}
    # Only the digest is stored.
    assert all(body["token"] not in str(row) for row in harness.snapshot()["tokens"])
    listed = await harness.call("GET", "/v1/notebooks", token=body["token"])
    assert listed.status == 200

    default = await create(harness, project.operator)
    assert default.json["role"] == "read" and default.json["label_selector"] == {}


async def test_who_may_create(harness: Harness, project: Tokens) -> None:
    before = harness.snapshot()
    denied = await create(harness, project.read, expect=403, role="read")
    assert "role operator" in denied.json["message"]
    admin = await create(harness, harness.admin_token, expect=403)
    assert "admin token" in admin.json["message"]
    await create(harness, "nbf_nobody", expect=401)
    bad = await create(harness, project.operator, expect=400, role="owner")
    assert "$.role" in bad.json["message"]
    bad = await create(harness, project.operator, expect=400, project="beta")
    assert "project" in bad.json["message"]
    assert harness.snapshot() == before


async def test_a_scoped_token_makes_only_tokens_at_least_as_scoped(
    harness: Harness, project: Tokens
) -> None:
    scoped = await create(harness, project.operator, role="operator", label_selector={"team": "cv"})
    child = await create(harness, scoped.json["token"], role="read", label_selector={"env": "dev"})
    assert child.json["label_selector"] == {"team": "cv", "env": "dev"}
    plain = await create(harness, scoped.json["token"], role="read")
    assert plain.json["label_selector"] == {"team": "cv"}
    wider = await create(harness, scoped.json["token"], expect=403, label_selector={"team": "nlp"})
    assert "limited to team=cv" in wider.json["message"]


async def test_list_shows_the_projects_tokens_without_secrets(
    harness: Harness, project: Tokens
) -> None:
    other = await harness.project("beta")
    scoped = await create(harness, project.operator, role="operator", label_selector={"team": "cv"})
    narrower = await create(harness, scoped.json["token"], description="dev only")

    everything = await harness.call("GET", "/v1/tokens", token=project.read)
    assert everything.status == 200
    items = everything.json["items"]
    assert [(t["role"], t["label_selector"]) for t in items] == [
        ("operator", {}),
        ("read", {}),
        ("operator", {"team": "cv"}),
        ("read", {"team": "cv"}),
    ]
    assert {t["project"] for t in items} == {"alpha"}
    assert set(items[0]) == {"id", "project", "role", "description", "label_selector", "created_at"}

    # A scoped token sees the tokens within its scope only.
    seen = await harness.call("GET", "/v1/tokens", token=scoped.json["token"])
    assert [t["id"] for t in seen.json["items"]] == [scoped.json["id"], narrower.json["id"]]
    theirs = await harness.call("GET", "/v1/tokens", token=other.read)
    assert {t["project"] for t in theirs.json["items"]} == {"beta"}


async def test_a_deleted_token_stops_working_at_once(harness: Harness, project: Tokens) -> None:
    created = await create(harness, project.operator, role="operator")
    token, token_id = created.json["token"], created.json["id"]
    # Used once: the scheduler now remembers it for a while (PRINCIPAL_CACHE_S)...
    assert (await harness.call("GET", "/v1/notebooks", token=token)).status == 200
    deleted = await harness.call("DELETE", f"/v1/tokens/{token_id}", token=project.operator)
    assert deleted.status == 200, deleted.text
    assert deleted.json["id"] == token_id and "token" not in deleted.json
    # ...but a delete forgets it: refused on the very next request, clock unmoved.
    again = await harness.call("GET", "/v1/notebooks", token=token)
    assert (again.status, again.code) == (401, "unauthenticated")
    listed = await harness.call("GET", "/v1/tokens", token=project.read)
    assert token_id not in [t["id"] for t in listed.json["items"]]
    gone = await harness.call("DELETE", f"/v1/tokens/{token_id}", token=project.operator)
    assert gone.status == 404

    # A token may delete itself; its next request is refused.
    me = await create(harness, project.operator, role="operator")
    own = await harness.call("DELETE", f"/v1/tokens/{me.json['id']}", token=me.json["token"])
    assert own.status == 200
    assert (await harness.call("GET", "/v1/tokens", token=me.json["token"])).status == 401


async def test_who_may_delete(harness: Harness, project: Tokens) -> None:
    other = await harness.project("beta")
    victim = await create(harness, project.operator, role="read")
    path = f"/v1/tokens/{victim.json['id']}"
    before = harness.snapshot()
    theirs = await harness.call("DELETE", path, token=other.operator)
    assert (theirs.status, theirs.code) == (404, "not_found")  # another project's: no such token
    reader = await harness.call("DELETE", path, token=project.read)
    assert reader.status == 403
    admin = await harness.call("DELETE", path, token=harness.admin_token)
    assert admin.status == 403
    scoped = await create(harness, project.operator, role="operator", label_selector={"team": "cv"})
    before = harness.snapshot()
    wider = await harness.call("DELETE", path, token=scoped.json["token"])
    assert wider.status == 403 and "reaches more" in wider.json["message"]
    assert harness.snapshot() == before


async def test_read_role_cannot_start_stop_delete_or_exec(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run()).json
    await host.report(nb["id"], "RUNNING")
    before = harness.snapshot()
    for action in ("stop", "start", "delete"):
        reply = await project.action(nb["id"], action, token=project.read)
        assert (reply.status, reply.code) == (403, "forbidden"), action
        assert "needs role operator" in reply.json["message"]
    ran = await harness.call(
        "POST", f"/v1/notebooks/{nb['id']}/exec", token=project.read, body={"command": ["id"]}
    )
    assert (ran.status, ran.code) == (403, "forbidden")
    assert harness.snapshot() == before
