"""Workspace snapshots on the real stack: checkpoints while RUNNING, backups, forks."""

import shutil
import time

import pytest

from tests.e2e.cluster import container_exec, docker, wait_for

pytestmark = pytest.mark.e2e


def backups(cluster, nb_id: str) -> list[dict]:
    return cluster.api("GET", f"/v1/notebooks/{nb_id}/backups")["items"]


def test_checkpoint_is_what_comes_back_after_the_host_dies(cluster, notebooks):
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--cpu", "1")
    notebooks.append(nb["id"])
    running = cluster.wait_state(nb["id"], "RUNNING")
    host = running["host"]
    container_exec(nb["id"], "echo 'an hour of work' > /workspace/work.txt")
    written_at = time.time()

    # A checkpoint taken after the write, while the notebook keeps RUNNING.
    wait_for(
        "a checkpoint taken after the file was written",
        lambda: any(
            b["kind"] == "checkpoint" and b["created_at"] > written_at and b["files"] >= 2
            for b in backups(cluster, nb["id"])
        ),
        60,
    )
    assert cluster.notebook(nb["id"])["state"] == "RUNNING"

    # The host dies: agent gone, container gone, local disk gone.
    agent = cluster.agents[host]
    cluster.kill_agent(host)
    docker("rm", "-f", f"nbfleet-{nb['id']}")
    shutil.rmtree(agent.workspaces / nb["id"])
    cluster.start_agent(host)
    lost = cluster.wait_state(nb["id"], "ERROR")
    assert "disappeared" in lost["state_reason"]
    # Nothing was pushed from the empty host: the checkpoint is still the newest backup.
    assert backups(cluster, nb["id"])[0]["files"] >= 2

    cluster.cli("notebook", "start", nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    assert container_exec(nb["id"], "cat /workspace/work.txt").strip() == "an hour of work"


def test_stop_makes_a_backup_and_fork_starts_from_it(cluster, notebooks):
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--cpu", "1", "--label", "exp=a")
    notebooks.append(nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    container_exec(nb["id"], "mkdir -p /workspace/models && echo weights > /workspace/models/v1")
    cluster.cli("notebook", "stop", nb["id"])
    stopped = cluster.wait_state(nb["id"], "STOPPED")
    wait_for("the stop snapshot to be reported", lambda: backups(cluster, nb["id"]), 30)
    latest = backups(cluster, nb["id"])[0]
    assert latest["files"] >= 2 and latest["logical_bytes"] > 0
    shown = cluster.cli("notebook", "backup", "list", nb["id"]).stdout
    assert latest["id"] in shown
    stopped = cluster.notebook(nb["id"])
    assert stopped["workspace"]["id"] == latest["id"]

    fork = cluster.cli_json("notebook", "fork", nb["id"], "--backup", latest["id"])
    notebooks.append(fork["id"])
    assert fork["forked_from"] == {"notebook": nb["id"], "snapshot": latest["id"]}
    assert fork["labels"] == {"exp": "a"}
    cluster.wait_state(fork["id"], "RUNNING")
    assert container_exec(fork["id"], "cat /workspace/models/v1").strip() == "weights"

    # The fork is its own notebook: its changes never reach the source's workspace.
    container_exec(fork["id"], "echo changed > /workspace/models/v1")
    cluster.cli("notebook", "stop", fork["id"])
    cluster.wait_state(fork["id"], "STOPPED")
    cluster.cli("notebook", "start", nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    assert container_exec(nb["id"], "cat /workspace/models/v1").strip() == "weights"


def test_agent_killed_mid_push_leaves_the_previous_backup_and_resumes(cluster, notebooks):
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--cpu", "1")
    notebooks.append(nb["id"])
    running = cluster.wait_state(nb["id"], "RUNNING")
    host = running["host"]
    container_exec(nb["id"], "echo v1 > /workspace/first.txt")
    wait_for(
        "a checkpoint with first.txt",
        lambda: any(b["files"] >= 2 for b in backups(cluster, nb["id"])),
        60,
    )
    before = backups(cluster, nb["id"])[0]

    # ~300 MB of incompressible data: the next checkpoint takes a few seconds to push.
    container_exec(
        nb["id"],
        "mkdir -p /workspace/run && for i in 1 2 3 4 5 6; do "
        "dd if=/dev/urandom of=/workspace/run/part$i bs=1M count=50 2>/dev/null; done; "
        "md5sum /workspace/run/* > /workspace/run.md5",
    )
    expected = container_exec(nb["id"], "cat /workspace/run.md5")

    def pushing():
        progress = cluster.notebook(nb["id"]).get("progress")
        return (
            progress
            if progress
            and progress["phase"] == "checkpoint"
            and 0 < progress["bytes_done"] < progress["bytes_total"]
            else None
        )

    wait_for("the checkpoint of the new data to be under way", pushing, 60, 0.05)
    cluster.kill_agent(host)
    # The interrupted push published nothing: the newest backup is the one from before.
    assert backups(cluster, nb["id"])[0]["id"] == before["id"]

    cluster.start_agent(host)
    # The notebook kept running; the next checkpoint completes the push.
    wait_for(
        "a checkpoint with the new data",
        lambda: backups(cluster, nb["id"])[0]["logical_bytes"] > 300_000_000,
        120,
    )
    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED")
    cluster.cli("notebook", "start", nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    assert container_exec(nb["id"], "cd / && md5sum /workspace/run/*") == expected
