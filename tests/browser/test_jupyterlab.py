"""JupyterLab in a real browser against the real stack (issue 5): a person opens the notebook's
URL, creates a notebook from the launcher, runs ``21*2`` and sees ``42``; after a stop and a
start the saved notebook is still there, with its output."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.jupyterlab import KERNEL_TIMEOUT_MS, JupyterLab
from tests.browser.stack import editor_url, is_proxied

pytestmark = pytest.mark.browser

START_TIMEOUT_S = 180


def test_a_cell_runs_and_its_notebook_survives_stop_and_start(cluster, notebooks, web, timings):
    started, wall_started = time.monotonic(), time.time()
    nb = cluster.cli_json("notebook", "run", "conda", "jupyterlab")
    notebooks.append(nb["id"])
    running = cluster.wait_state(nb["id"], "RUNNING", START_TIMEOUT_S)
    at_running, wall_running = time.monotonic(), time.time()
    # Where run → RUNNING went, by the notebook's own history (scheduler and agent clocks are
    # this machine's): the CLI until the notebook existed, placement and delivery until the
    # agent said STARTING, the start itself, and how late this test's polling saw it.
    history = cluster.notebook(nb["id"])["history"]
    first_at = {}
    for change in history:
        first_at.setdefault(change["state"], change["at"])
    timings.record(
        "notebook run → RUNNING, by the notebook's history",
        cli_to_created=history[0]["at"] - wall_started,
        created_to_starting=first_at["STARTING"] - history[0]["at"],
        starting_to_running=first_at["RUNNING"] - first_at["STARTING"],
        running_to_seen=wall_running - first_at["RUNNING"],
    )

    page = web.new_page()
    lab = JupyterLab(page)
    lab.open(editor_url(running, cluster.token))
    at_lab = time.monotonic()
    panel = lab.new_python_notebook()
    at_kernel = time.monotonic()
    output = lab.run_in_first_cell(panel, "21*2")
    expect(output).to_have_text("42", timeout=KERNEL_TIMEOUT_MS)
    at_output = time.monotonic()
    timings.record(
        "notebook run → JupyterLab runs a cell",
        via="proxy" if is_proxied(running) else "published port",
        run_to_running=at_running - started,
        running_to_lab_loaded=at_lab - at_running,
        launcher_to_kernel_idle=at_kernel - at_lab,
        cell_to_output=at_output - at_kernel,
        total=at_output - started,
    )
    lab.save_new_notebook_as("answer.ipynb")

    cluster.cli("notebook", "stop", nb["id"])
    cluster.wait_state(nb["id"], "STOPPED", START_TIMEOUT_S)
    cluster.cli("notebook", "start", nb["id"])
    restarted = cluster.wait_state(nb["id"], "RUNNING", START_TIMEOUT_S)
    # Where each start's time went, as the agent measured it (issue 16).
    for run, change in enumerate(
        [h for h in cluster.notebook(nb["id"])["history"] if h["state"] == "RUNNING"], start=1
    ):
        timings.record(f"JupyterLab start {run}: the agent's steps", **change["phases"])
    if is_proxied(running):
        assert restarted["url"] == running["url"], "a notebook's URL is stable across restarts"

    lab.open(editor_url(restarted, cluster.token))
    panel = lab.open_file("answer.ipynb")
    cell = panel.locator(".jp-Cell").first
    expect(cell.locator(".cm-content")).to_have_text("21*2")
    expect(cell.locator(".jp-OutputArea-output")).to_have_text("42")
