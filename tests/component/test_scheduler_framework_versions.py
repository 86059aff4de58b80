"""Framework versions: the catalog lists them, newest first, with what each image holds as
the hosts' agents read it from its labels; ``run`` takes a version (the newest by default)
and a notebook keeps it across stops, starts and forks, whatever the catalog offers later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.config import FrameworkSpec, FrameworkVersionSpec
from scheduler.api.context import CONTEXT
from tests.component.conftest import FakeClock, Harness, Tokens, started, with_frameworks

HF = {
    "editors": ["jupyterlab"],
    "description": "transformers, datasets, accelerate",
    "versions": {
        "4.57": {"image": "nbfleet/huggingface:4.57"},
        "5.9": {"image": "nbfleet/huggingface:5.9"},
        "5.18": {"image": "nbfleet/huggingface:5.18", "description": "transformers 5"},
    },
}


def image(tag: str, **contents: str) -> dict[str, Any]:
    framework, _, version = tag.rpartition(":")
    return {
        "tags": [tag],
        "framework": framework.rpartition("/")[2],
        "version": version,
        "contents": contents,
    }


@pytest.fixture
async def harness(tmp_path: Path, clock: FakeClock):
    async with started(with_frameworks(tmp_path, huggingface=HF), clock) as h:
        yield h


async def test_the_catalog_lists_versions_newest_first_with_what_the_hosts_images_hold(
    harness: Harness, project: Tokens
) -> None:
    async def versions() -> list[dict[str, Any]]:
        reply = await harness.call("GET", "/v1/catalog", token=project.read)
        assert reply.status == 200, reply.text
        [hf] = [f for f in reply.json["frameworks"] if f["name"] == "huggingface"]
        assert hf["image"] == "nbfleet/huggingface:5.18"  # the default's, for older clients
        return hf["versions"]

    # Numbers compare as numbers: 5.18 is newer than 5.9. No host has reported any image yet.
    before = await versions()
    assert [(v["version"], v["image"], v["hosts"], v["contents"]) for v in before] == [
        ("5.18", "nbfleet/huggingface:5.18", 0, {}),
        ("5.9", "nbfleet/huggingface:5.9", 0, {}),
        ("4.57", "nbfleet/huggingface:4.57", 0, {}),
    ]
    assert before[0]["description"] == "transformers 5"

    new = {"python": "3.11.2", "transformers": "5.18.0"}
    await harness.agent("h1").register(
        images=[image("nbfleet/huggingface:5.18", **new), image("nbfleet/huggingface:4.57")]
    )
    await harness.agent("h2").register(images=[image("nbfleet/huggingface:5.18", **new)])
    # A host whose build differs (rebuilt there only) is outvoted, not shown.
    await harness.agent("h3").register(
        images=[image("nbfleet/huggingface:5.18", python="3.11.2", transformers="5.17.0")]
    )
    after = {v["version"]: v for v in await versions()}
    assert (after["5.18"]["contents"], after["5.18"]["hosts"]) == (new, 3)
    assert (after["4.57"]["contents"], after["4.57"]["hosts"]) == ({}, 1)
    assert after["5.9"]["hosts"] == 0

    # A host registering again with other images replaces what it had.
    await harness.agent("h1").register(images=[])
    after = {v["version"]: v for v in await versions()}
    assert (after["5.18"]["hosts"], after["4.57"]["hosts"]) == (2, 0)


async def test_run_takes_the_newest_version_unless_asked_and_names_a_missing_one(
    harness: Harness, project: Tokens
) -> None:
    await harness.agent("h1").register(gpus=4)
    newest = (await project.run(framework="huggingface")).json
    assert (newest["framework_version"], newest["image"]) == ("5.18", "nbfleet/huggingface:5.18")
    older = (await project.run(framework="huggingface", framework_version="4.57")).json
    assert (older["framework_version"], older["image"]) == ("4.57", "nbfleet/huggingface:4.57")

    refused = await project.run(expect=400, framework="huggingface", framework_version="3.0")
    assert refused.json["detail"]["field"] == "$.framework_version"
    assert "no version '3.0'" in refused.json["message"]
    assert "5.18, 5.9, 4.57" in refused.json["message"]
    stored = harness.committed("SELECT framework_version FROM notebooks ORDER BY created_at")
    assert sorted(row[0] for row in stored) == ["4.57", "5.18"]

    # A framework configured with one image (before versions) has one version: its tag.
    legacy = (await project.run(framework="conda")).json
    assert (legacy["framework_version"], legacy["image"]) == ("test", "nbfleet/conda:test")


async def test_a_notebook_keeps_its_version_across_stop_start_and_fork(
    harness: Harness, project: Tokens
) -> None:
    host = harness.agent("h1")
    await host.register(gpus=4)
    nb = (await project.run(framework="huggingface")).json
    await host.report(nb["id"], "RUNNING")

    # The operator adds a newer version: new notebooks get it, this one keeps its own.
    frameworks = harness.app[CONTEXT].config.catalog.frameworks
    versions = dict(frameworks["huggingface"].versions)
    versions["6.0"] = FrameworkVersionSpec(image="nbfleet/huggingface:6.0")
    frameworks["huggingface"] = msgspec.structs.replace(
        frameworks["huggingface"], versions=versions
    )
    assert isinstance(frameworks["huggingface"], FrameworkSpec)

    assert (await project.action(nb["id"], "stop")).status == 202
    await host.report(nb["id"], "STOPPED")
    started = (await project.action(nb["id"], "start")).json
    assert (started["generation"], started["framework_version"], started["image"]) == (
        2,
        "5.18",
        "nbfleet/huggingface:5.18",
    )
    [assignment] = (await host.assignments())["items"]
    assert assignment["image"] == "nbfleet/huggingface:5.18"
    fresh = (await project.run(framework="huggingface")).json
    assert fresh["framework_version"] == "6.0"

    # A fork runs the software its source's workspace was made with.
    await host.report(nb["id"], "RUNNING", generation=2)
    await host.call(
        "POST",
        "/v1/agents/snapshots",
        {
            "notebook": nb["id"],
            "generation": 2,
            "snapshot": {
                "id": "20261201T000000000Z-aaaa",
                "created_at": harness.clock(),
                "kind": "checkpoint",
                "files": 1,
                "logical_bytes": 10,
                "stored_bytes": 10,
            },
            "retained": ["20261201T000000000Z-aaaa"],
        },
    )
    fork = await harness.call(
        "POST",
        f"/v1/notebooks/{nb['id']}/fork",
        token=project.operator,
        body={"backup": "20261201T000000000Z-aaaa"},
    )
    assert fork.status == 201, fork.text
    assert (fork.json["framework_version"], fork.json["image"]) == (
        "5.18",
        "nbfleet/huggingface:5.18",
    )
