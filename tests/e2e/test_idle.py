"""Issue 14 on the real stack: a notebook nobody uses through its editor stays up while its GPU
(nvidia-ml-py's real calls into the fake ``libnvidia-ml.so.1``, whose figures the test changes
while the agent runs) or its CPUs (Docker's stats of a real container) are busy, and is stopped
the normal way once they are not, with the reason naming what was idle. Real waits, short
operator-set windows: the agents look every second (``activity_interval_s``)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.cluster import container_exec, wait_for
from tests.support.nvml import GpuFigures, write_gpu_state

pytestmark = pytest.mark.e2e

TIMEOUT_S = 15
#: How long a test watches a busy notebook outlive its timeout.
BUSY_WATCH_S = 2 * TIMEOUT_S


def _run(cluster, notebooks, *args: str) -> dict:
    nb = cluster.cli_json(
        "notebook", "run", "tiny", "httpd", "--idle-timeout", f"{TIMEOUT_S}s", *args
    )
    notebooks.append(nb["id"])
    assert nb["idle_timeout_s"] == TIMEOUT_S
    return cluster.wait_state(nb["id"], "RUNNING")


def _stays_running(cluster, nb_id: str, seconds: float) -> dict:
    """Poll the scheduler (never the notebook's URL: that would be editor traffic) for
    ``seconds``; the notebook must stay RUNNING throughout."""
    deadline = time.monotonic() + seconds
    while True:
        nb = cluster.notebook(nb_id)
        assert nb["state"] == "RUNNING", (nb["state"], nb["state_reason"], nb["idle"])
        if time.monotonic() >= deadline:
            return nb
        time.sleep(1)


def _stopped_when_idle(cluster, nb_id: str, quiet_since: float, reason: str) -> None:
    stopping = wait_for(
        f"notebook {nb_id} to be stopped for being idle",
        lambda: (nb := cluster.notebook(nb_id))["state"] != "RUNNING" and nb,
        TIMEOUT_S + 45,
    )
    assert stopping["state"] in ("STOPPING", "STOPPED"), stopping
    assert time.time() - quiet_since >= TIMEOUT_S - 1
    stopped = cluster.wait_state(nb_id, "STOPPED")
    reasons = [(h["state"], h["reason"]) for h in stopped["history"]]
    assert ("STOPPING", reason) in reasons, reasons


def test_a_busy_gpu_keeps_a_notebook_without_traffic_running_until_it_goes_quiet(
    cluster, notebooks
):
    nb = _run(cluster, notebooks, "--gpu", "1")
    agent = cluster.agents[nb["host"]]
    gpu = nb["gpus"][0]["uuid"]
    try:
        write_gpu_state(agent.gpu_state, {gpu: GpuFigures(utilization_pct=90)})
        watched = _stays_running(cluster, nb["id"], BUSY_WATCH_S)
        assert watched["idle"]["signal"] == "GPU 90%", watched["idle"]
        assert watched["idle"]["idle_s"] < TIMEOUT_S / 2, watched["idle"]
        assert watched["idle"]["timeout_s"] == TIMEOUT_S
        # Below the threshold (5%) is idle.
        write_gpu_state(agent.gpu_state, {gpu: GpuFigures(utilization_pct=3)})
        quiet_since = time.time()
    finally:
        write_gpu_state(agent.gpu_state, {})
    _stopped_when_idle(
        cluster,
        nb["id"],
        quiet_since,
        f"idle for {TIMEOUT_S} s: no editor traffic, GPU below 5%",
    )


def test_a_busy_cpu_keeps_a_cpu_notebook_without_traffic_running(cluster, notebooks):
    nb = _run(cluster, notebooks, "--cpu", "1")
    # A loop in the notebook (what a training script started from a terminal looks like),
    # stopped by removing the file it watches.
    container_exec(
        nb["id"],
        "touch /tmp/busy; (while [ -e /tmp/busy ]; do :; done) >/dev/null 2>&1 &",
    )
    watched = _stays_running(cluster, nb["id"], BUSY_WATCH_S)
    assert watched["idle"]["signal"].startswith("CPU "), watched["idle"]
    container_exec(nb["id"], "rm -f /tmp/busy")
    quiet_since = time.time()
    _stopped_when_idle(
        cluster,
        nb["id"],
        quiet_since,
        f"idle for {TIMEOUT_S} s: no editor traffic, CPU below 5%",
    )
