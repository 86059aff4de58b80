"""Framework versions and ``notebook update`` on the real stack: the catalog shows what the
images on the hosts hold (their labels, read by the agents from dockerd), a notebook runs the
version it asked for and keeps it across stops and starts, and ``nbfleet notebook update``
changes what a running notebook may change (409 for the rest) and the rest once it stopped."""

import json

import pytest

from tests.e2e.cluster import TINY_IMAGES, container_exec, docker, wait_for

pytestmark = pytest.mark.e2e


def release(nb_id: str) -> str:
    """Which tiny image the container runs: each version's image says it in a file."""
    return container_exec(nb_id, "cat /etc/nbfleet-release").strip()


def test_the_catalog_shows_what_each_versions_image_holds(cluster):
    def tiny():
        hosts = cluster.api("GET", "/v1/admin/hosts", token=cluster.admin_token)["items"]
        live = sum(1 for h in hosts if h["state"] != "lost")
        catalog = cluster.cli_json("catalog")
        [framework] = [f for f in catalog["frameworks"] if f["name"] == "tiny"]
        # Every agent of the cluster drives this dockerd, so each reports both images.
        if all(v["hosts"] == live >= 2 for v in framework["versions"]):
            return framework
        return None

    framework = wait_for("every live host to report the tiny images", tiny, 30)
    assert [v["version"] for v in framework["versions"]] == ["2", "1"]
    for version in framework["versions"]:
        labels = json.loads(
            docker("image", "inspect", "--format", "{{json .Config.Labels}}", version["image"])
        )
        expected = {
            k.removeprefix("org.nbfleet.contents."): v
            for k, v in labels.items()
            if k.startswith("org.nbfleet.contents.")
        }
        assert expected and version["contents"] == expected
        assert labels["org.nbfleet.framework.version"] == version["version"]
    table = cluster.cli("catalog").stdout
    assert "2 (default)" in table and "busybox" in table


def test_a_notebook_keeps_its_version_and_update_changes_it_once_stopped(cluster, notebooks):
    assert TINY_IMAGES == {"1": "nbfleet/tiny:1", "2": "nbfleet/tiny:2"}
    nb = cluster.cli_json(
        "notebook", "run", "tiny", "httpd", "--cpu", "1", "--framework-version", "1",
        "--envvar", "MODE=first",
    )  # fmt: skip
    notebooks.append(nb["id"])
    assert (nb["framework_version"], nb["image"]) == ("1", "nbfleet/tiny:1")
    cluster.wait_state(nb["id"], "RUNNING")
    assert release(nb["id"]) == "1"

    # What shapes the container cannot change under it: 409 naming the state, nothing changed.
    refused = cluster.cli(
        "notebook", "update", nb["id"], "--framework-version", "2", "--label", "a=b", check=False
    )
    assert refused.returncode == 1
    assert "RUNNING" in refused.stderr and "notebook stop" in refused.stderr
    assert cluster.notebook(nb["id"])["labels"] == {}
    bad = cluster.cli("notebook", "update", nb["id"], "--name", "Not A Name", check=False)
    assert bad.returncode == 1 and "$.name" in bad.stderr

    # Labels at once; env vars wait for the next start, and both the reply and get say so.
    changed = cluster.cli(
        "notebook", "update", nb["id"], "--label", "stage=eval", "--envvar", "MODE=second"
    )
    assert "gets them at its next start" in changed.stderr
    got = cluster.notebook(nb["id"])
    assert (got["labels"], got["pending_restart"]) == ({"stage": "eval"}, ["envvars"])
    assert "Waiting for a restart: envvars" in cluster.cli("notebook", "get", nb["id"]).stdout
    assert container_exec(nb["id"], "echo $MODE").strip() == "first"

    # Stopped: the version and the resources change, and the next start runs them.
    cluster.cli("notebook", "stop", nb["id"], "--wait")
    cluster.cli("notebook", "update", nb["id"], "--framework-version", "2", "--cpu", "2")
    cluster.cli("notebook", "start", nb["id"], "--wait")
    assert release(nb["id"]) == "2"
    assert container_exec(nb["id"], "echo $MODE").strip() == "second"
    inspect = json.loads(docker("inspect", f"nbfleet-{nb['id']}"))[0]
    assert inspect["Config"]["Image"] == "nbfleet/tiny:2"
    assert inspect["HostConfig"]["NanoCpus"] == 2_000_000_000
    got = cluster.notebook(nb["id"])
    assert (got["framework_version"], got["pending_restart"], got["cpu"]) == ("2", [], 2)

    # And keeps it: another stop and start runs version 2 again.
    cluster.cli("notebook", "stop", nb["id"], "--wait")
    missing = cluster.cli("notebook", "update", nb["id"], "--framework-version", "7", check=False)
    assert missing.returncode == 1 and "$.framework_version" in missing.stderr
    cluster.cli("notebook", "start", nb["id"], "--wait")
    assert release(nb["id"]) == "2"
