"""The whole lifecycle on the real stack: scheduler and two agents as processes, real dockerd,
real S3, fake GPUs seen through nvidia-ml-py."""

import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.e2e.cluster import container_exec, docker, wait_for
from tests.support.processes import http_get

pytestmark = pytest.mark.e2e


def run_tiny(cluster, notebooks, *args):
    nb = cluster.cli_json("notebook", "run", "tiny", *args)
    notebooks.append(nb["id"])
    return nb


def test_two_gpu_notebook_lands_on_the_host_with_two_free_gpus(cluster, notebooks):
    nb = run_tiny(cluster, notebooks, "httpd", "--gpu", "2", "--label", "team=vision")
    assert nb["state"] == "STARTING"
    host_b = cluster.agent("host-b")
    assert nb["host"] == host_b.host_id
    assert sorted(g["uuid"] for g in nb["gpus"]) == sorted(u for u, _, _ in host_b.gpus)

    running = cluster.wait_state(nb["id"], "RUNNING")
    inspect = json.loads(docker("inspect", f"nbfleet-{nb['id']}"))[0]
    env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
    assert sorted(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == sorted(u for u, _, _ in host_b.gpus)
    # Unprivileged by default.
    assert inspect["Config"]["User"] not in ("", "0", "root", "0:0")
    assert inspect["HostConfig"]["CapDrop"] and "ALL" in inspect["HostConfig"]["CapDrop"]
    assert container_exec(nb["id"], "id -u").strip() != "0"
    # The editor answers at the URL `get` prints, to a project token only.
    status, _ = http_get(running["url"], cluster.token)
    assert status < 500
    assert http_get(running["url"])[0] == 401

    # No host has two free GPUs any more: the request waits in the queue, with its position.
    queued = run_tiny(cluster, notebooks, "httpd", "--gpu", "2")
    assert queued["state"] == "QUEUED" and queued["host"] is None
    assert (
        "QUEUED: waiting for 2 GPUs, position 1"
        in cluster.cli("notebook", "get", queued["id"]).stdout
    )
    cluster.cli("notebook", "delete", queued["id"])
    assert cluster.notebook(queued["id"])["state"] == "DELETED"  # it never ran anywhere
    # Over the project's quota of 4 GPUs (2 in use): refused at once, naming the limit.
    before = cluster.api("GET", "/v1/notebooks")["items"]
    refused = cluster.cli("notebook", "run", "tiny", "httpd", "--gpu", "3", check=False)
    assert refused.returncode == 1
    assert "GPUs in use 2 + 3 requested would exceed the quota of 4" in refused.stderr
    assert len(cluster.api("GET", "/v1/notebooks")["items"]) == len(before)

    # list filters by label and state; get shows host, GPUs, URL and history.
    listed = cluster.cli_json("notebook", "list", "--label", "team=vision", "--state", "RUNNING")
    assert [n["id"] for n in listed] == [nb["id"]]
    shown = cluster.cli("notebook", "get", nb["id"]).stdout
    for text in [
        "RUNNING",
        host_b.host_id,
        host_b.gpus[0][0],
        running["url"],
        "History:",
        "STARTING",
    ]:
        assert text in shown


def test_workspace_survives_stop_and_start(cluster, notebooks):
    nb = run_tiny(cluster, notebooks, "httpd", "--gpu", "1")
    cluster.wait_state(nb["id"], "RUNNING")
    container_exec(
        nb["id"],
        "echo 'my work' > /workspace/notes.txt && mkdir -p /workspace/src/pkg && "
        "echo 'print(42)' > /workspace/src/pkg/main.py && chmod 750 /workspace/src/pkg/main.py"
        " && echo scratch > /data/scratch.txt",
    )
    host_dir = cluster.agents[nb["host"]].workspaces / nb["id"]
    assert (host_dir / ".workspace.initialized").exists()

    cluster.cli("notebook", "stop", nb["id"])
    stopped = cluster.wait_state(nb["id"], "STOPPED")
    assert stopped["host"] is None
    # Pushed, then (and only then) the host copy is removed.
    wait_for("host workspace dir removed after push", lambda: not host_dir.exists(), 30)
    assert (
        subprocess.run(["docker", "inspect", f"nbfleet-{nb['id']}"], capture_output=True).returncode
        != 0
    )

    cluster.cli("notebook", "start", nb["id"])
    running = cluster.wait_state(nb["id"], "RUNNING")
    assert container_exec(nb["id"], "cat /workspace/notes.txt").strip() == "my work"
    assert container_exec(nb["id"], "cat /workspace/src/pkg/main.py").strip() == "print(42)"
    assert container_exec(nb["id"], "stat -c %a /workspace/src/pkg/main.py").strip() == "750"
    # /data is scratch: gone after the notebook left RUNNING.
    assert container_exec(nb["id"], "ls /data").strip() == ""
    # Same id, and the editor serves the restored file at the notebook's URL.
    status, body = http_get(running["url"].rstrip("/") + "/notes.txt", cluster.token)
    assert (status, body.strip()) == (200, b"my work")
    history = cluster.notebook(nb["id"])["history"]
    states = [h["state"] for h in history]
    assert states == ["STARTING", "RUNNING", "STOPPING", "STOPPED", "STARTING", "RUNNING"]
    # Where the time went, as the agent measured it: a restart restores the workspace.
    first_start, stop, restart = history[1]["phases"], history[3]["phases"], history[5]["phases"]
    assert {"container", "editor"} <= set(first_start), first_start
    assert {"container", "push"} <= set(stop), stop
    assert {"restore", "container", "editor"} <= set(restart), restart
    shown = cluster.cli("notebook", "get", nb["id"]).stdout
    assert re.search(r"Last start: +started in [0-9.]+ s \(.*container [0-9.]+", shown), shown
    assert re.search(r"Last stop: +stopped in [0-9.]+ s", shown), shown


def test_deleted_workspace_marker_ends_in_error(cluster, notebooks):
    nb = run_tiny(cluster, notebooks, "httpd", "--cpu", "1")
    cluster.wait_state(nb["id"], "RUNNING")
    container_exec(nb["id"], "rm /workspace/.workspace.initialized")
    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")
    cluster.cli("notebook", "start", nb["id"])
    errored = cluster.wait_state(nb["id"], "ERROR")
    assert ".workspace.initialized" in errored["state_reason"]
    # Nothing of it keeps running.
    assert (
        subprocess.run(["docker", "inspect", f"nbfleet-{nb['id']}"], capture_output=True).returncode
        != 0
    )


def test_agent_killed_and_restarted_adopts_the_running_notebook(cluster, notebooks):
    nb = run_tiny(cluster, notebooks, "httpd", "--cpu", "1")
    running = cluster.wait_state(nb["id"], "RUNNING")
    host = nb["host"]
    before = json.loads(docker("inspect", f"nbfleet-{nb['id']}"))[0]

    cluster.kill_agent(host)
    # The notebook keeps running while its agent is gone (its editor is out of reach: the
    # agent's proxy is the only way in).
    assert json.loads(docker("inspect", f"nbfleet-{nb['id']}"))[0]["State"]["Running"]
    cluster.start_agent(host)

    # Give the restarted agent a few reconcile rounds, then check nothing was recreated.
    wait_for(
        "agent reconciled after restart",
        lambda: (
            "adopt" in cluster.agents[host].log.read_text().lower()
            or cluster.notebook(nb["id"])["state"] == "RUNNING"
        ),
        30,
    )
    after = json.loads(docker("inspect", f"nbfleet-{nb['id']}"))[0]
    assert after["Id"] == before["Id"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert after["State"]["Running"]
    assert cluster.notebook(nb["id"])["state"] == "RUNNING"
    # Its URL reaches it again, through the restarted agent's proxy.
    wait_for(
        "the adopted notebook's editor through the proxy",
        lambda: http_get(running["url"], cluster.token)[0] < 500,
        30,
    )

    # And the adopted notebook is still fully managed: it stops cleanly.
    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")


def test_container_exiting_non_zero_ends_in_failed(cluster, notebooks):
    nb = run_tiny(cluster, notebooks, "crash", "--cpu", "1")
    failed = cluster.wait_state(nb["id"], "FAILED")
    assert "3" in failed["state_reason"]
    # The container is gone, but what it printed before dying is what the user needs.
    logs = cluster.cli("notebook", "logs", nb["id"])
    assert "failing on purpose" in logs.stdout
    # A FAILED notebook can be started again (and fails again, the same way).
    cluster.cli("notebook", "start", nb["id"])
    cluster.wait_state(nb["id"], "FAILED")


def test_bad_input_is_refused_with_the_field_named(cluster, notebooks):
    cases = [
        (["notebook", "run", "nope", "httpd"], "framework"),
        (["notebook", "run", "tiny", "vscode"], "editor"),
        (["notebook", "run", "tiny", "httpd", "--gpu", "-1"], "$.gpu"),
        (["notebook", "run", "tiny", "httpd", "--gpu", "1000"], "$.gpu"),
        (["notebook", "run", "tiny", "httpd", "--flavor", "tpu"], "$.flavor"),
    ]
    before = cluster.api("GET", "/v1/notebooks")["items"]
    for args, field in cases:
        result = cluster.cli(*args, check=False)
        assert result.returncode == 1, result
        assert field in result.stderr, (args, result.stderr)
    # Checked by the CLI before any request (usage error, exit 2), naming the flag.
    local = cluster.cli("notebook", "run", "tiny", "httpd", "--label", "bad key=v", check=False)
    assert local.returncode == 2 and "--label 'bad key=v'" in local.stderr
    assert cluster.api("GET", "/v1/notebooks")["items"] == before
    missing = cluster.cli("notebook", "get", "00000000-0000-0000-0000-000000000000", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_conflicting_actions_name_the_current_state(cluster, notebooks):
    nb = run_tiny(cluster, notebooks, "httpd", "--cpu", "1")
    cluster.wait_state(nb["id"], "RUNNING")
    again = cluster.cli("notebook", "start", nb["id"], check=False)
    assert again.returncode == 1 and "RUNNING" in again.stderr
    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")
    twice = cluster.cli("notebook", "stop", nb["id"], check=False)
    assert twice.returncode == 1 and "STOPPED" in twice.stderr
    assert cluster.notebook(nb["id"])["state"] == "STOPPED"


def test_delete_removes_container_and_workspace(cluster, notebooks, s3_client):
    nb = run_tiny(cluster, notebooks, "httpd", "--cpu", "1")
    cluster.wait_state(nb["id"], "RUNNING")
    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")
    prefix = f"{nb['id']}/workspace/"
    assert s3_client.list(cluster.bucket, prefix), "stop pushed the workspace to S3"
    cluster.cli("notebook", "delete", nb["id"])
    cluster.wait_state(nb["id"], "DELETED")
    assert s3_client.list(cluster.bucket, prefix) == []
    assert nb["id"] not in [n["id"] for n in cluster.api("GET", "/v1/notebooks")["items"]]


def test_only_health_is_open(cluster):
    assert urllib.request.urlopen(cluster.url + "/health", timeout=5).status == 200
    for path in ["/v1/notebooks", "/v1/catalog", "/v1/admin/hosts", "/v1/agents/assignments"]:
        status, body = http_get(cluster.url + path)
        assert status == 401, (path, status)
        assert json.loads(body)["code"] == "unauthenticated"
    # Agent endpoints refuse a user token and unsigned requests.
    req = urllib.request.Request(cluster.url + "/v1/agents/heartbeat", data=b"{}", method="POST")
    req.add_header("Authorization", f"Bearer {cluster.token}")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401


def test_host_without_nvidia_driver_reports_zero_gpus_and_keeps_running(cluster):
    """No libnvidia-ml.so.1 at all (a CPU-only host): nvidia-ml-py's load fails, the agent
    registers with zero GPUs and says why, and stays up."""
    agent = cluster.add_agent("host-cpu", [], nvml=False)
    hosts = {
        h["id"]: h
        for h in cluster.api("GET", "/v1/admin/hosts", token=cluster.admin_token)["items"]
    }
    assert hosts[agent.host_id]["gpus"] == []
    assert "NVML" in hosts[agent.host_id]["gpu_note"]
    listed = cluster.cli("admin", "host", "list", token=cluster.admin_token).stdout
    assert agent.host_id in listed and "NVML" in listed
    # Still alive and heartbeating a few intervals later.
    first = hosts[agent.host_id]["last_heartbeat"]
    wait_for(
        "a later heartbeat from host-cpu",
        lambda: (
            next(
                h
                for h in cluster.api("GET", "/v1/admin/hosts", token=cluster.admin_token)["items"]
                if h["id"] == agent.host_id
            )["last_heartbeat"]
            > first
        ),
        15,
    )
    assert agent.proc.poll() is None
