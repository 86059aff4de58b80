"""An open JupyterLab keeps working while every scheduler is down (issue 13), reached as users
reach it in production: at the notebook's stable URL on ``nbfleet-router``, which the load
balancer sends ``/notebooks/`` to.

The person has the notebook open and has saved it; the scheduler is killed (-9) and stays down
for two minutes, during which cells run and the notebook is saved, at the start and at the end;
then the scheduler comes back: the notebook is still RUNNING, the saved file is in its
workspace, its minutes of the outage are billed (the agent kept them), and the editor goes on.
The router and the agent each say in their logs that they served from what they remembered.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.browser.jupyterlab import KERNEL_TIMEOUT_MS, JupyterLab
from tests.browser.stack import with_token
from tests.e2e.cluster import container_exec, wait_for

pytestmark = pytest.mark.browser

START_TIMEOUT_S = 180
#: The issue's figure: every replica down for two minutes.
OUTAGE_S = 120


def test_an_open_jupyterlab_saves_and_runs_cells_while_every_scheduler_is_down(
    cluster, notebooks, web
):
    router = cluster.start_router()
    nb = cluster.cli_json("notebook", "run", "conda", "jupyterlab")
    notebooks.append(nb["id"])
    running = cluster.wait_state(nb["id"], "RUNNING", START_TIMEOUT_S)
    editor = f"{router.url}/notebooks/{nb['id']}/"
    # The test saves by hand and checks each save; JupyterLab's autosave (every 120 s, the
    # outage's length) would race those checks.
    no_autosave = urllib.request.Request(
        editor + "lab/api/settings/@jupyterlab/docmanager-extension:plugin",
        data=json.dumps({"raw": json.dumps({"autosave": False})}).encode(),
        headers={"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"},
        method="PUT",
    )
    with urllib.request.urlopen(no_autosave, timeout=30) as reply:
        assert reply.status in (200, 204), reply.status
    page = web.new_page()
    lab = JupyterLab(page)
    lab.open(with_token(editor, cluster.token))
    panel = lab.new_python_notebook()
    expect(lab.run_in_first_cell(panel, "21*2")).to_have_text("42", timeout=KERNEL_TIMEOUT_MS)
    lab.save_new_notebook_as("outage.ipynb")

    def saved(*sources: str) -> str:
        """The notebook as the editor wrote it into the workspace, once it holds every
        source (read with docker, not through nbfleet)."""

        def holding() -> str | None:
            text = container_exec(nb["id"], "cat /workspace/outage.ipynb")
            return text if all(source in text for source in sources) else None

        return wait_for(f"outage.ipynb saved with {sources}", holding, 30)

    cluster.kill_scheduler()
    down_at = time.monotonic()
    expect(lab.run_in_last_cell(panel, "6*7")).to_have_text("42", timeout=KERNEL_TIMEOUT_MS)
    lab.save("outage.ipynb")
    saved("6*7")
    page.wait_for_timeout(max(0.0, OUTAGE_S - (time.monotonic() - down_at)) * 1000)
    # Two minutes on: past the agent's 10 s token cache and the router's 1 s lookups, so
    # both answer from their outage memory now.
    expect(lab.run_in_last_cell(panel, "sum(range(10))")).to_have_text(
        "45", timeout=KERNEL_TIMEOUT_MS
    )
    lab.save("outage.ipynb")
    text = saved("sum(range(10))")
    assert '"45"' in text, text[-1500:]
    outage_s = time.monotonic() - down_at
    assert outage_s >= OUTAGE_S

    cluster.start_scheduler()
    after = cluster.notebook(nb["id"])
    assert after["state"] == "RUNNING", after
    # Billed per commenced minute of RUNNING; the agent reports what it counted meanwhile.
    # The wait is the agent's outbox reaching the scheduler again, not the billing itself.
    ran_s = time.time() - running["running_since"]
    expected = math.floor(ran_s / 60)
    billed = wait_for(
        f"at least {expected} billed minutes for {ran_s:.0f}s of RUNNING",
        lambda: (m := cluster.notebook(nb["id"])["billed_minutes"]) >= expected and m,
        60,
    )
    assert billed <= math.ceil((time.time() - running["running_since"]) / 60)
    expect(lab.run_in_last_cell(panel, "'back'")).to_have_text("'back'")
    # The scheduler gives hosts one heartbeat TTL after its start before it judges them
    # silent; by now that has passed, and the host was heard in time: nothing was lost.
    now = cluster.notebook(nb["id"])
    assert now["state"] == "RUNNING", now
    assert [h["state"] for h in now["history"]] == ["STARTING", "RUNNING"], now

    router_log = router.log.read_text()
    assert "no scheduler answers" in router_log, router_log[-3000:]
    assert f"notebook={nb['id']} served at its last known host" in router_log
    agent_log = cluster.agent("host-a").log.read_text()
    assert "the scheduler cannot be reached" in agent_log, agent_log[-3000:]
    assert "admitting this token" in agent_log
