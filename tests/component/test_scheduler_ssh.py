"""SSH into a notebook, the scheduler's side: keys given at run or on a stopped notebook, shown
as fingerprints only, sent in full only to the agent running the notebook, and the ``ssh://``
address from the host's registered SSH server while RUNNING."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from common.ssh import parse_public_key
from tests.component.conftest import Agent, Harness, Tokens
from tests.component.test_scheduler_snapshots import report_snapshot, snapshot
from tests.support.ssh_keys import blob, ed25519_line

ADA = ed25519_line("ada", "ada@laptop")
BOB = ed25519_line("bob", "bob@desk")
SSH_ADDRESS = "h1.example.com:2222"


@pytest.fixture
async def ssh_host(harness: Harness) -> Agent:
    """Host ``h1`` whose agent serves SSH at :data:`SSH_ADDRESS`."""
    agent = harness.agent("h1")
    await agent.register(gpus=2, ssh_address=SSH_ADDRESS)
    return agent


def fingerprints(nb: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(k["type"], k["fingerprint"], k["comment"]) for k in nb["ssh_keys"]]


def info(line: str) -> tuple[str, str, str]:
    key = parse_public_key(line)
    return key.type, key.fingerprint, key.comment


def base64_of(line: str) -> str:
    return line.split()[1]


async def assignment(agent: Agent, notebook: str) -> dict[str, Any]:
    items = {a["notebook"]: a for a in (await agent.assignments())["items"]}
    return items[notebook]


async def stopped(project: Tokens, agent: Agent, notebook: str, generation: int = 1) -> None:
    reply = await project.action(notebook, "stop")
    assert reply.status == 202, reply.text
    await agent.report(notebook, "STOPPED", generation=generation)


async def put_keys(harness: Harness, notebook: str, keys: list[str], token: str) -> Any:
    return await harness.call(
        "PUT", f"/v1/notebooks/{notebook}/ssh-keys", token=token, body={"keys": keys}
    )


async def test_keys_are_shown_as_fingerprints_and_never_returned(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    reply = await project.run(ssh_public_keys=[ADA, BOB])
    nb = reply.json
    assert fingerprints(nb) == [info(ADA), info(BOB)]
    assert nb["ssh_keys"][0]["fingerprint"].startswith("SHA256:")
    got = await harness.call("GET", f"/v1/notebooks/{nb['id']}", token=project.read)
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    for text in (reply.text, got.text, listed.text):
        assert base64_of(ADA) not in text and base64_of(BOB) not in text
    assert fingerprints(got.json) == fingerprints(nb)
    assert fingerprints(listed.json["items"][0]) == fingerprints(nb)


async def test_the_agent_running_it_gets_the_full_keys(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA, BOB, ADA.replace(" ada@", "   ada@")])).json
    # Normalized, and a key given twice is kept once.
    assert (await assignment(ssh_host, nb["id"]))["ssh_public_keys"] == [ADA, BOB]
    other = harness.agent("h2")
    await other.register(gpus=2)
    assert (await other.assignments())["items"] == []
    # A stopping notebook takes no logins: the agent is told no keys.
    await project.action(nb["id"], "stop")
    assert (await assignment(ssh_host, nb["id"]))["ssh_public_keys"] == []


async def test_ssh_address_is_the_hosts_while_running(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    assert nb["state"] == "STARTING" and nb["ssh"] is None
    await ssh_host.report(nb["id"], "RUNNING", url="http://h1:5/lab")
    running = await project.get(nb["id"])
    assert running["ssh"] == f"ssh://{nb['id']}@{SSH_ADDRESS}"
    listed = await harness.call("GET", "/v1/notebooks", token=project.read)
    assert listed.json["items"][0]["ssh"] == running["ssh"]

    stopping = (await project.action(nb["id"], "stop")).json
    assert stopping["ssh"] is None
    await ssh_host.report(nb["id"], "STOPPED")
    assert (await project.get(nb["id"]))["ssh"] is None


async def test_no_ssh_address_without_keys_or_on_a_host_without_ssh(
    harness: Harness, project: Tokens
) -> None:
    plain = harness.agent("h1")
    await plain.register(gpus=2)
    with_keys = (await project.run(ssh_public_keys=[ADA])).json
    without = (await project.run()).json
    for nb in (with_keys, without):
        await plain.report(nb["id"], "RUNNING", url="http://h1:5/lab")
        assert (await project.get(nb["id"]))["ssh"] is None
    assert (await project.get(without["id"]))["ssh_keys"] == []

    # The agent comes back with SSH: the running notebook with keys gets an address.
    await plain.register(gpus=2, ssh_address=SSH_ADDRESS)
    assert (await project.get(with_keys["id"]))["ssh"] == f"ssh://{with_keys['id']}@{SSH_ADDRESS}"
    assert (await project.get(without["id"]))["ssh"] is None


async def test_hosts_list_their_ssh_address(harness: Harness, ssh_host: Agent) -> None:
    await harness.agent("h2").register(gpus=0)
    reply = await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)
    assert {h["id"]: h["ssh_address"] for h in reply.json["items"]} == {
        "h1": SSH_ADDRESS,
        "h2": "",
    }
    # An agent registering again without SSH turns it off.
    await ssh_host.register(gpus=2)
    reply = await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)
    assert reply.json["items"][0]["ssh_address"] == ""


async def test_a_bad_ssh_address_at_register_is_400_naming_it(harness: Harness) -> None:
    agent = harness.agent("h1")
    body = {"cpus": 4, "memory_mb": 1024, "gpus": [], "agent_url": "http://h1", "version": "t"}
    reply = await agent.call("POST", "/v1/agents/register", {**body, "ssh_address": "h1:99999"})
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert "`$.ssh_address`" in reply.json["message"]


# ---------------------------------------------------------------- changing keys


async def test_keys_change_at_once_and_reach_the_agent_running_the_notebook(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    await ssh_host.report(nb["id"], "RUNNING", url="http://h1:5/lab")
    before = (await ssh_host.assignments())["version"]
    changed = await put_keys(harness, nb["id"], [BOB], project.operator)
    assert changed.status == 200, changed.text
    assert fingerprints(changed.json) == [info(BOB)]
    assert base64_of(BOB) not in changed.text
    assert fingerprints(await project.get(nb["id"])) == [info(BOB)]
    # The host's long-poll answers with the new keys: the next connection needs BOB's.
    polled = await ssh_host.assignments(since=before)
    assert polled["version"] != before
    [item] = polled["items"]
    assert item["ssh_public_keys"] == [BOB]
    assert (await project.get(nb["id"]))["ssh"] == f"ssh://{nb['id']}@{SSH_ADDRESS}"

    # Stopped, the keys wait in the notebook for its next start.
    await stopped(project, ssh_host, nb["id"])
    assert (await put_keys(harness, nb["id"], [ADA, BOB], project.operator)).status == 200
    assert (await project.action(nb["id"], "start")).status == 202
    assert (await assignment(ssh_host, nb["id"]))["ssh_public_keys"] == [ADA, BOB]


@pytest.mark.parametrize("state", ["FAILED", "ERROR"])
async def test_keys_change_on_a_failed_notebook_and_can_be_cleared(
    harness: Harness, project: Tokens, ssh_host: Agent, state: str
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    await ssh_host.report(nb["id"], state, reason="exited 1")
    cleared = await put_keys(harness, nb["id"], [], project.operator)
    assert cleared.status == 200, cleared.text
    assert cleared.json["ssh_keys"] == [] and cleared.json["ssh"] is None


async def test_keys_of_a_deleted_notebook_are_409(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    assert (await project.action(nb["id"], "delete")).status == 202
    reply = await put_keys(harness, nb["id"], [BOB], project.operator)
    assert (reply.status, reply.json["detail"]["state"]) == (409, "DELETING")
    assert "is DELETING" in reply.json["message"]


async def test_a_read_token_cannot_change_keys(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    await stopped(project, ssh_host, nb["id"])
    before = harness.snapshot()
    reply = await put_keys(harness, nb["id"], [BOB], project.read)
    assert (reply.status, reply.code) == (403, "forbidden")
    assert harness.snapshot() == before


async def test_keys_of_another_projects_notebook_are_404(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    await stopped(project, ssh_host, nb["id"])
    other = await harness.project("beta")
    reply = await put_keys(harness, nb["id"], [BOB], other.operator)
    assert reply.status == 404


# ---------------------------------------------------------------- bad keys

ED = blob(b"ssh-ed25519", bytes(32))
MISLABELLED = f"ssh-rsa {base64.b64encode(ED).decode()} says rsa, holds ed25519"
TRUNCATED = f"ssh-ed25519 {base64.b64encode(ED[:-4]).decode()}"


@pytest.mark.parametrize(
    ("keys", "field", "says"),
    [
        (["ssh-dss AAAAB3NzaC1kc3M"], "$.ssh_public_keys[0]", "matching regex"),
        ([ADA, f"{BOB}\n{ADA}"], "$.ssh_public_keys[1]", "matching regex"),
        ([ADA, "ssh-ed25519 AAAA\u0000"], "$.ssh_public_keys[1]", "matching regex"),
        ([MISLABELLED], "$.ssh_public_keys[0]", "the key inside is 'ssh-ed25519'"),
        ([ADA, TRUNCATED], "$.ssh_public_keys[1]", "truncated"),
        ([ed25519_line(str(i)) for i in range(21)], "$.ssh_public_keys", "length <= 20"),
        ("ssh-ed25519 AAAA", "$.ssh_public_keys", "Expected `array`"),
    ],
)
async def test_bad_keys_at_run_are_400_naming_the_field_and_store_nothing(
    harness: Harness, project: Tokens, ssh_host: Agent, keys: Any, field: str, says: str
) -> None:
    before = harness.snapshot()
    reply = await project.run(expect=400, ssh_public_keys=keys)
    assert reply.code == "invalid_request"
    assert f"`{field}`" in reply.json["message"] and says in reply.json["message"], reply.text
    assert harness.snapshot() == before


@pytest.mark.parametrize(
    ("keys", "field"),
    [([ADA, MISLABELLED], "$.keys[1]"), (["nope"], "$.keys[0]"), (None, "keys")],
)
async def test_bad_keys_in_an_update_are_400_naming_the_field(
    harness: Harness, project: Tokens, ssh_host: Agent, keys: Any, field: str
) -> None:
    nb = (await project.run(ssh_public_keys=[ADA])).json
    await stopped(project, ssh_host, nb["id"])
    before = harness.snapshot()
    body = {} if keys is None else {"keys": keys}
    reply = await harness.call(
        "PUT", f"/v1/notebooks/{nb['id']}/ssh-keys", token=project.operator, body=body
    )
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert f"`{field}`" in reply.json["message"], reply.text
    assert harness.snapshot() == before


# ---------------------------------------------------------------- forks


async def test_a_fork_gets_only_the_keys_given_to_it(
    harness: Harness, project: Tokens, ssh_host: Agent
) -> None:
    source = (await project.run(gpu=0, ssh_public_keys=[ADA])).json
    await ssh_host.report(source["id"], "RUNNING", url="http://h1:5/lab")
    await report_snapshot(ssh_host, source["id"], snapshot("s1", 100.0))
    path = f"/v1/notebooks/{source['id']}/fork"
    bare = await harness.call("POST", path, token=project.operator, body={"backup": "s1"})
    assert bare.status == 201, bare.text
    assert bare.json["ssh_keys"] == []
    given = await harness.call(
        "POST", path, token=project.operator, body={"backup": "s1", "ssh_public_keys": [BOB]}
    )
    assert given.status == 201, given.text
    assert fingerprints(given.json) == [info(BOB)]
    assert (await assignment(ssh_host, given.json["id"]))["ssh_public_keys"] == [BOB]
    bad = await harness.call(
        "POST", path, token=project.operator, body={"backup": "s1", "ssh_public_keys": [TRUNCATED]}
    )
    assert bad.status == 400 and "`$.ssh_public_keys[0]`" in bad.json["message"]


async def test_every_agent_gets_the_fleets_one_ssh_host_key(harness: Harness) -> None:
    """A notebook's SSH host key must not change when it moves to another host: clients'
    known_hosts entries are per notebook (HostKeyAlias nb-ID)."""
    first = (await harness.agent("a").register(gpus=0)).json["ssh_host_key"]
    second = (await harness.agent("b").register(gpus=0)).json["ssh_host_key"]
    assert first == second and "OPENSSH PRIVATE KEY" in first
    key = asyncssh.import_private_key(first + "\n")
    assert key.algorithm == b"ssh-ed25519"
    stored = Path(harness.config.admin_token_file).parent / "ssh_host_ed25519_key"
    assert stored.read_text().strip() == first and stored.stat().st_mode & 0o777 == 0o600
