"""Who may open a notebook's editor, as a browser sees it (issue 5): the notebook's stable URL
needs a token of its project (one whose label selector matches), and a notebook started with
``--unsecure-http`` opens for anyone."""

from __future__ import annotations

import json
import re
import secrets

import pytest
from playwright.sync_api import expect

from tests.browser.jupyterlab import KERNEL_TIMEOUT_MS, JupyterLab
from tests.browser.stack import require_proxied, with_token

pytestmark = pytest.mark.browser

START_TIMEOUT_S = 180


def run_jupyterlab(cluster, notebooks, *args: str) -> dict:
    nb = cluster.cli_json("notebook", "run", "conda", "jupyterlab", *args)
    notebooks.append(nb["id"])
    running = cluster.wait_state(nb["id"], "RUNNING", START_TIMEOUT_S)
    require_proxied(running)
    return running


def token_of(cluster, *args: str, token: str | None = None) -> str:
    created = cluster.cli("token", "create", *args, "-o", "json", token=token)
    return json.loads(created.stdout)["token"]


def test_a_notebook_opens_only_with_a_token_of_its_project(cluster, notebooks, web):
    nb = run_jupyterlab(cluster, notebooks)
    url = nb["url"]

    # No token: refused, with a page saying how to get in; the editor never loads.
    page = web.new_page()
    response = page.goto(url)
    assert response is not None and response.status == 401, response and response.status
    expect(page.get_by_text("needs a project token")).to_be_visible()
    expect(page.locator("#jp-top-panel")).to_have_count(0)

    # Another project's token (an operator one, even): 403.
    other = f"other-{secrets.token_hex(3)}"
    cluster.cli("admin", "project", "create", other, token=cluster.admin_token)
    page = web.new_page()
    response = page.goto(with_token(url, cluster.project_token(other)))
    assert response is not None and response.status == 403, response and response.status
    expect(page.get_by_text("Access refused")).to_be_visible()

    # A token of this project scoped to a label the notebook does not carry: 403.
    scoped = token_of(cluster, "--role", "read", "--label-selector", "team=elsewhere")
    page = web.new_page()
    response = page.goto(with_token(url, scoped))
    assert response is not None and response.status == 403, response and response.status
    expect(page.get_by_text("Access refused")).to_be_visible()

    # A read token of the project opens the editor, and the cookie keeps it open without the
    # token in the URL.
    reader = token_of(cluster, "--role", "read")
    page = web.new_page()
    lab = JupyterLab(page)
    lab.open(with_token(url, reader))
    assert "token=" not in page.url, "the proxy redirects to the URL without the token"
    lab.open(url)


def test_an_unsecure_http_notebook_opens_without_a_token(cluster, notebooks, web):
    nb = run_jupyterlab(cluster, notebooks, "--unsecure-http")
    page = web.new_page()
    lab = JupyterLab(page)
    lab.open(nb["url"])
    # Its kernel's WebSocket goes through the proxy without a token too.
    output = lab.run_in_first_cell(lab.new_python_notebook(), "6*7")
    expect(output).to_have_text("42", timeout=KERNEL_TIMEOUT_MS)
    assert not re.search(r"[?&]token=", page.url)
