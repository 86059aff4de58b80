"""Issue 4 on the real stack: a killed agent's host is declared lost after the heartbeat TTL
(2 s × 3 here), its notebooks go to ERROR and its GPUs are not offered; a restart-on-timeout
notebook comes back on another host from its last checkpoint; the host that comes back
retires the containers no longer assigned to it."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.cluster import container_exec, docker, wait_for

pytestmark = pytest.mark.e2e


def _host(cluster, host_id: str) -> dict:
    hosts = cluster.api("GET", "/v1/admin/hosts", token=cluster.admin_token)
    return next(h for h in hosts["items"] if h["id"] == host_id)


def _container_gone(nb_id: str) -> bool:
    probe = subprocess.run(["docker", "inspect", f"nbfleet-{nb_id}"], capture_output=True)
    return probe.returncode != 0


def test_killed_agent_host_is_lost_and_comes_back(cluster, notebooks):
    host_a = cluster.agent("host-a")
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--gpu", "1")
    notebooks.append(nb["id"])
    assert nb["host"] == host_a.host_id  # best fit: host-a has exactly one GPU
    cluster.wait_state(nb["id"], "RUNNING")
    container_exec(nb["id"], "echo kept > /workspace/kept.txt")

    cluster.kill_agent(host_a.host_id)
    try:
        lost = cluster.wait_state(nb["id"], "ERROR", timeout_s=30)
        assert lost["state_reason"].startswith(f"host lost: {host_a.host_id}")
        assert _host(cluster, host_a.host_id)["state"] == "lost"
        # its GPU is not offered: a notebook wanting one H100-host GPU goes elsewhere
        other = cluster.cli_json("notebook", "run", "tiny", "httpd", "--gpu", "1")
        notebooks.append(other["id"])
        assert other["host"] == cluster.agent("host-b").host_id
    finally:
        cluster.start_agent(host_a.host_id)

    # its first heartbeat is told to register, and registering makes it ready again
    wait_for("host-a ready again", lambda: _host(cluster, host_a.host_id)["state"] == "ready", 30)
    # the container of the notebook it no longer holds is stopped, pushed, removed
    wait_for("the orphan container to be retired", lambda: _container_gone(nb["id"]), 60)
    cluster.cli("notebook", "start", nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    assert container_exec(nb["id"], "cat /workspace/kept.txt").strip() == "kept"


def test_restart_on_timeout_notebook_moves_to_another_host(cluster, notebooks):
    host_a, host_b = cluster.agent("host-a"), cluster.agent("host-b")
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--gpu", "1", "--restart-on-timeout")
    notebooks.append(nb["id"])
    assert nb["host"] == host_a.host_id
    cluster.wait_state(nb["id"], "RUNNING")
    container_exec(nb["id"], "echo 'before the crash' > /workspace/work.txt")
    written = cluster.notebook(nb["id"])["state_at"]
    wait_for(
        "a checkpoint holding the file",
        lambda: any(
            b["kind"] == "checkpoint" and b["files"] >= 2 and b["created_at"] > written
            for b in cluster.api("GET", f"/v1/notebooks/{nb['id']}/backups")["items"]
        ),
        60,
    )

    # The host dies: agent and container gone.
    cluster.kill_agent(host_a.host_id)
    docker("rm", "-f", f"nbfleet-{nb['id']}")
    try:
        moved = wait_for(
            "the notebook RUNNING again on host-b",
            lambda: (
                (got := cluster.notebook(nb["id"]))["state"] == "RUNNING"
                and got["generation"] == 2
                and got
            ),
            90,
        )
        assert moved["host"] == host_b.host_id
        states = [h["state"] for h in moved["history"]]
        assert states[-4:] == ["ERROR", "QUEUED", "STARTING", "RUNNING"] or states[-3:] == [
            "ERROR",
            "STARTING",
            "RUNNING",
        ]
        assert container_exec(nb["id"], "cat /workspace/work.txt").strip() == "before the crash"
    finally:
        cluster.start_agent(host_a.host_id)
