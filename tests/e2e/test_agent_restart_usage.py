"""An agent killed during a scheduler outage loses nothing: what it reported while the
scheduler was down (a run's end, its final minutes) is in its spool and sent after the restart.

The real stack (conftest's cluster): scheduler and agents as processes, real dockerd and S3."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import docker, wait_for

pytestmark = pytest.mark.e2e


class SchedulerOutage:
    """Stops and starts the cluster's scheduler. While the test runs, the scheduler it starts
    allows a long heartbeat silence: this test is about the agent's spool, not about how long
    an outage may last before the scheduler gives hosts up (nor about losing the race with its
    first host-lost check after a restart)."""

    def __init__(self, cluster, monkeypatch) -> None:
        self.cluster = cluster
        self.monkeypatch = monkeypatch

    def stop(self) -> None:
        proc = self.cluster.scheduler
        proc.terminate()
        proc.wait(15)

    def start(self) -> None:
        self.monkeypatch.setenv("NBFLEET_SCHEDULER_HEARTBEAT_MISSES", "60")
        self.cluster.start_scheduler()

    def restore(self) -> None:
        """The shared cluster as the other tests expect it: every process up, default TTL."""
        self.monkeypatch.delenv("NBFLEET_SCHEDULER_HEARTBEAT_MISSES", raising=False)
        if self.cluster.scheduler.poll() is None:
            self.stop()
        self.cluster.start_scheduler()
        for host_id, agent in self.cluster.agents.items():
            if agent.proc is None or agent.proc.poll() is not None:
                self.cluster.start_agent(host_id)


@pytest.fixture
def scheduler_outage(cluster, monkeypatch):
    outage = SchedulerOutage(cluster, monkeypatch)
    yield outage
    outage.restore()


def test_run_ended_while_scheduler_down_is_reported_after_agent_kill(
    cluster, notebooks, scheduler_outage
):
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--cpu", "1")
    notebooks.append(nb["id"])
    host_id = nb["host"]
    spool = cluster.agents[host_id].root / "state" / "outbox.json"
    cluster.wait_state(nb["id"], "RUNNING")
    billed = wait_for(
        "the agent to report the run's first minute",
        lambda: cluster.notebook(nb["id"])["billed_minutes"],
        30,
    )

    scheduler_outage.stop()
    # The notebook ends while nobody can hear about it: the agent saves the workspace and
    # queues FAILED and the run's final minutes, which only its spool keeps.
    docker("kill", f"nbfleet-{nb['id']}")
    wait_for(
        "the agent to spool the FAILED report",
        lambda: spool.exists() and b'"FAILED"' in spool.read_bytes(),
        30,
    )
    cluster.kill_agent(host_id)

    scheduler_outage.start()
    cluster.start_agent(host_id)
    # Without the spool the restarted agent would find no container and no host dir and
    # could only report ERROR ("container and host workspace disappeared").
    failed = cluster.wait_state(nb["id"], "FAILED", 60)
    assert failed["state_reason"] == "container exited with code 137"
    assert failed["billed_minutes"] >= billed >= 1
    wait_for(
        "the delivered reports to leave the spool",
        lambda: b'"FAILED"' not in spool.read_bytes(),
        30,
    )
