"""Datastores and notebook volumes through the API: aliases per project, credentials only over
the agent protocol, volume checks at create, and deletes refused while a notebook uses them."""

from __future__ import annotations

import pytest

from tests.component.conftest import START, Agent, Harness, Tokens

ACCESS = "AKIA-TEST-ACCESS-7f3a"
SECRET = "s3cr3t-never-shown-9b1c"


async def add_store(project: Tokens, alias: str = "lab-s3", token: str | None = None, **extra):
    body = {
        "alias": alias,
        "endpoint": "https://s3.lab.example:9000",
        "access_key": ACCESS,
        "secret_key": SECRET,
        **extra,
    }
    return await project.harness.call(
        "POST", "/v1/datastores", token=token or project.operator, body=body
    )


def volume(**fields):
    return {
        "container": "datasets",
        "alias": "lab-s3",
        "prefix": "imagenet",
        "mount_path": "/workspace/data",
        "permission": "rw",
        **fields,
    }


async def test_add_list_delete_never_returns_credentials(harness: Harness, project: Tokens) -> None:
    created = await add_store(project, region="eu-west-3")
    assert created.status == 201, created.text
    assert created.json == {
        "alias": "lab-s3",
        "endpoint": "https://s3.lab.example:9000",
        "region": "eu-west-3",
        "created_at": START,
    }
    await add_store(project, "archive")

    listed = await harness.call("GET", "/v1/datastores", token=project.read)
    assert listed.status == 200
    assert [d["alias"] for d in listed.json["items"]] == ["archive", "lab-s3"]
    assert listed.json["items"][0]["region"] == "us-east-1"
    for reply in (created, listed):
        assert ACCESS not in reply.text and SECRET not in reply.text

    again = await add_store(project)
    assert (again.status, again.code) == (409, "conflict")

    deleted = await harness.call("DELETE", "/v1/datastores/archive", token=project.operator)
    assert deleted.status == 200 and SECRET not in deleted.text
    missing = await harness.call("DELETE", "/v1/datastores/archive", token=project.operator)
    assert missing.status == 404
    listed = await harness.call("GET", "/v1/datastores", token=project.read)
    assert [d["alias"] for d in listed.json["items"]] == ["lab-s3"]


async def test_aliases_belong_to_their_project(harness: Harness, project: Tokens) -> None:
    other = await harness.project("beta")
    await add_store(project)
    assert (await harness.call("GET", "/v1/datastores", token=other.read)).json["items"] == []
    gone = await harness.call("DELETE", "/v1/datastores/lab-s3", token=other.operator)
    assert gone.status == 404
    # The same alias in another project is another datastore.
    assert (await add_store(other)).status == 201


async def test_read_role_lists_but_cannot_add_or_delete(harness: Harness, project: Tokens) -> None:
    refused = await add_store(project, token=project.read)
    assert (refused.status, refused.code) == (403, "forbidden")
    await add_store(project)
    refused = await harness.call("DELETE", "/v1/datastores/lab-s3", token=project.read)
    assert refused.status == 403
    assert (await harness.call("GET", "/v1/datastores", token=project.read)).status == 200
    admin = await harness.call("GET", "/v1/datastores", token=harness.admin_token)
    assert admin.status == 403


@pytest.mark.parametrize(
    "body, field",
    [
        (
            {"alias": "Bad Alias", "endpoint": "https://x", "access_key": "a", "secret_key": "b"},
            "$.alias",
        ),
        (
            {"alias": "ok", "endpoint": "ftp://x", "access_key": "a", "secret_key": "b"},
            "$.endpoint",
        ),
        (
            {"alias": "ok", "endpoint": "https://x", "access_key": "", "secret_key": "b"},
            "$.access_key",
        ),
        ({"alias": "ok", "endpoint": "https://x", "access_key": "a"}, "secret_key"),
    ],
)
async def test_bad_datastore_bodies_name_the_field(
    harness: Harness, project: Tokens, body, field
) -> None:
    reply = await harness.call("POST", "/v1/datastores", token=project.operator, body=body)
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert field in reply.json["message"]


async def test_notebook_volumes_are_stored_shown_and_resolved_for_the_agent(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await add_store(project, region="eu-west-3")
    ro = volume(container="models", prefix="", mount_path="/models", permission="ro")
    nb = (await project.run(volumes=[volume(), ro])).json
    assert nb["volumes"] == [volume(), ro]
    got = await project.get(nb["id"])
    assert got["volumes"] == [volume(), ro]
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert listed.json["items"][0]["volumes"] == [volume(), ro]
    for text in (got, listed.text):
        assert SECRET not in str(text) and ACCESS not in str(text)

    # Only the agent protocol carries the datastore's endpoint and keys.
    items = (await host.assignments())["items"]
    assert [a["notebook"] for a in items] == [nb["id"]]
    assert items[0]["volumes"] == [
        {
            "volume": volume(),
            "endpoint": "https://s3.lab.example:9000",
            "region": "eu-west-3",
            "access_key": ACCESS,
            "secret_key": SECRET,
        },
        {
            "volume": ro,
            "endpoint": "https://s3.lab.example:9000",
            "region": "eu-west-3",
            "access_key": ACCESS,
            "secret_key": SECRET,
        },
    ]
    # A notebook without volumes has none.
    plain = (await project.run(gpu=0)).json
    assert plain["volumes"] == []


async def test_unknown_alias_is_400_naming_the_volume(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await add_store(project)
    before = harness.snapshot()
    reply = await project.run(
        expect=400, volumes=[volume(), volume(alias="nowhere", mount_path="/mnt/x")]
    )
    assert reply.code == "invalid_request"
    assert reply.json["detail"]["field"] == "$.volumes[1].alias"
    assert "$.volumes[1].alias" in reply.json["message"] and "nowhere" in reply.json["message"]
    first = await project.run(expect=400, volumes=[volume(alias="nowhere")])
    assert first.json["detail"]["field"] == "$.volumes[0].alias"
    assert harness.snapshot() == before  # nothing stored


async def test_another_projects_alias_is_unknown(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    other = await harness.project("beta")
    await add_store(other)
    reply = await project.run(expect=400, volumes=[volume()])
    assert reply.json["detail"]["field"] == "$.volumes[0].alias"


@pytest.mark.parametrize(
    "paths, field",
    [
        (["/mnt/data", "/mnt/data"], "$.volumes[1].mount_path"),
        (["/mnt/data", "/mnt/data/"], "$.volumes[1].mount_path"),
        (["/mnt/data", "/mnt/data/sub"], "$.volumes[1].mount_path"),
        (["/workspace"], "$.volumes[0].mount_path"),
        (["/workspace/"], "$.volumes[0].mount_path"),
        (["/data"], "$.volumes[0].mount_path"),
        (["/mnt/ok", "/etc"], "$.volumes[1].mount_path"),
        (["/usr/local/data"], "$.volumes[0].mount_path"),
        (["/proc"], "$.volumes[0].mount_path"),
        (["/sys/x"], "$.volumes[0].mount_path"),
        (["/dev"], "$.volumes[0].mount_path"),
        (["/bin"], "$.volumes[0].mount_path"),
    ],
)
async def test_bad_mount_paths_are_400(
    harness: Harness, project: Tokens, host: Agent, paths, field
) -> None:
    await add_store(project)
    reply = await project.run(expect=400, volumes=[volume(mount_path=p) for p in paths])
    assert reply.json["detail"]["field"] == field, reply.text


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"mount_path": "relative/path"}, "$.volumes[0].mount_path"),
        ({"mount_path": "/"}, "$.volumes[0].mount_path"),
        ({"mount_path": "/mnt/../etc"}, "$.volumes[0].mount_path"),
        ({"permission": "rx"}, "$.volumes[0].permission"),
        ({"container": "UPPER"}, "$.volumes[0].container"),
        ({"prefix": "../up"}, "$.volumes[0].prefix"),
        ({"prefix": "/abs"}, "$.volumes[0].prefix"),
    ],
)
async def test_malformed_volumes_are_400(
    harness: Harness, project: Tokens, host: Agent, bad, field
) -> None:
    reply = await project.run(expect=400, volumes=[volume(**bad)])
    assert field in reply.json["message"], reply.text


async def test_work_paths_under_workspace_are_allowed(project: Tokens, host: Agent) -> None:
    await add_store(project)
    nb = (await project.run(volumes=[volume(mount_path="/workspace/data")])).json
    assert nb["volumes"][0]["mount_path"] == "/workspace/data"


async def test_deleting_an_alias_in_use_is_409_naming_the_notebooks(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await add_store(project)
    await add_store(project, "spare")
    first = (await project.run(volumes=[volume()])).json
    second = (await project.run(volumes=[volume(mount_path="/mnt/a")])).json

    reply = await harness.call("DELETE", "/v1/datastores/lab-s3", token=project.operator)
    assert (reply.status, reply.code) == (409, "conflict")
    assert first["id"] in reply.json["message"] and second["id"] in reply.json["message"]
    assert sorted(reply.json["detail"]["notebooks"]) == sorted([first["id"], second["id"]])
    # An unused alias goes.
    spare = await harness.call("DELETE", "/v1/datastores/spare", token=project.operator)
    assert spare.status == 200

    # Stopped notebooks still use it; deleted ones do not.
    for nb in (first, second):
        await host.report(nb["id"], "RUNNING", url="http://h1:1/")
        await project.action(nb["id"], "delete")
        await host.report(nb["id"], "DELETED", reason="deleted")
    reply = await harness.call("DELETE", "/v1/datastores/lab-s3", token=project.operator)
    assert reply.status == 200, reply.text


async def test_volumes_survive_a_restart_and_follow_restarts(
    harness: Harness, project: Tokens, host: Agent
) -> None:
    await add_store(project)
    nb = (await project.run(volumes=[volume()])).json
    await host.report(nb["id"], "RUNNING", url="http://h1:1/")
    await project.action(nb["id"], "stop")
    await host.report(nb["id"], "STOPPED", reason="stopped")
    await harness.restart()
    assert (await project.get(nb["id"]))["volumes"] == [volume()]
    await project.action(nb["id"], "start")
    items = (await host.assignments())["items"]
    assert items[0]["generation"] == 2
    assert items[0]["volumes"][0]["volume"] == volume()
    assert items[0]["volumes"][0]["secret_key"] == SECRET
