"""The web console in Chromium against the real stack (issue 15): a person signs in with a
project token, runs a JupyterLab notebook from the form, watches the list reach RUNNING, opens
the editor (the console hands the proxy its cookie: no token in any URL), stops it, starts it
and deletes it. A read token sees no button it may not use; a form posted from another site is
refused; an operator cordons, drains and uncordons a host. The notebooks page is saved as the
README's screenshot (``docs/console-notebooks.png``) when ``NBFLEET_UPDATE_SCREENSHOTS=1``."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PROJECT
from tests.browser.stack import artifacts_dir
from tests.e2e.cluster import REPO

pytestmark = pytest.mark.browser

START_TIMEOUT_MS = 180_000
SCREENSHOT = REPO / "docs" / "console-notebooks.png"


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert token not in page.url


def row(page: Page, name: str):
    return page.locator("tbody tr", has=page.get_by_role("link", name=name, exact=True))


def wait_for_state(page: Page, name: str, state: str) -> None:
    """The list refreshes itself: wait for the row to say ``state``."""
    expect(row(page, name).locator(".state")).to_have_text(state, timeout=START_TIMEOUT_MS)


def test_run_open_stop_start_delete_from_the_console(cluster, notebooks, web):
    page = web.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, cluster.url, cluster.token)

    page.get_by_role("link", name="Run a notebook").first.click()
    page.get_by_label("Framework", exact=True).select_option("conda")
    page.get_by_label("Editor", exact=True).select_option("jupyterlab")
    page.get_by_label(re.compile("^Name")).fill("console-lab")
    page.get_by_label(re.compile("^GPUs")).fill("1")
    page.get_by_label(re.compile("^CPUs")).fill("")
    page.get_by_label(re.compile("^Labels")).fill("made-by=console")
    # The command beside the form follows it.
    expect(page.locator("#cli-command")).to_have_text(
        "nbfleet notebook run conda jupyterlab --gpu 1 --name console-lab --label made-by=console"
    )
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("^console-lab"))).to_be_visible()
    notebook_id = page.url.rsplit("/", 1)[1]
    notebooks.append(notebook_id)

    page.get_by_role("link", name="Notebooks").click()
    wait_for_state(page, "console-lab", "RUNNING")
    if os.environ.get("NBFLEET_UPDATE_SCREENSHOTS") == "1":
        shot = artifacts_dir() / "console-notebooks.png"
        page.screenshot(path=shot)
        shutil.copyfile(shot, SCREENSHOT)

    # Open: JupyterLab loads in a new tab, the token in no URL along the way.
    with page.context.expect_page() as opened:
        row(page, "console-lab").get_by_role("link", name=re.compile("^Open")).click()
    lab = opened.value
    urls: list[str] = []
    lab.on("framenavigated", lambda frame: urls.append(frame.url))
    expect(lab.locator("#jp-top-panel .lm-MenuBar")).to_be_visible(timeout=START_TIMEOUT_MS)
    assert f"/notebooks/{notebook_id}/" in lab.url
    assert cluster.token not in lab.url and all(cluster.token not in u for u in urls)
    lab.close()

    row(page, "console-lab").get_by_role("button", name=re.compile("^Stop")).click()
    wait_for_state(page, "console-lab", "STOPPED")

    # The stop saved a backup: fork it into a new notebook from the notebook's page.
    row(page, "console-lab").get_by_role("link", name="console-lab", exact=True).click()
    backup = page.locator("tr[data-backup]").first
    backup_id = backup.get_attribute("data-backup")
    backup.get_by_label(re.compile("^Name of the fork")).fill("console-fork")
    backup.get_by_role("button", name=re.compile("^Fork")).click()
    expect(page.get_by_role("heading", name=re.compile("^console-fork"))).to_be_visible()
    fork_id = page.url.rsplit("/", 1)[1]
    notebooks.append(fork_id)
    assert cluster.notebook(fork_id)["forked_from"] == {
        "notebook": notebook_id,
        "snapshot": backup_id,
    }

    page.get_by_role("link", name="Notebooks").click()
    row(page, "console-lab").get_by_role("button", name=re.compile("^Start")).click()
    wait_for_state(page, "console-lab", "RUNNING")
    wait_for_state(page, "console-fork", "RUNNING")

    # The notebook's page has its history, newest first.
    row(page, "console-lab").get_by_role("link", name="console-lab", exact=True).click()
    history = page.get_by_role("table").filter(has_text="Reason")
    expect(history.locator("tbody tr").first).to_contain_text("RUNNING")
    expect(history).to_contain_text("STOPPED")
    page.get_by_role("button", name="Delete").click()  # confirmed by the dialog handler
    expect(page.locator("h1 .state")).to_have_text(re.compile("DELETING|DELETED"))
    assert cluster.wait_state(notebook_id, "DELETED")["state"] == "DELETED"


def test_the_usage_page_shows_the_apis_totals(cluster, web):
    page = web.new_page()
    sign_in(page, cluster.url, cluster.token)
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name=re.compile("^Usage of"))).to_be_visible()
    start = page.get_by_label("From").input_value()
    end = page.get_by_label("To (not included)").input_value()
    api = cluster.api("GET", f"/v1/projects/{PROJECT}/usage?from={start}&to={end}")
    total = api["total"]
    cells = page.locator("#usage-groups tfoot tr td").all_inner_texts()
    assert cells[:2] == [str(total["notebooks"]), str(total["minutes"])], (cells, total)
    models = sorted(total["gpu_minutes"])
    assert cells[2 : 2 + len(models)] == [str(total["gpu_minutes"][m]) for m in models]
    assert cells[2 + len(models)] == str(total["cpu_minutes"])
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    last = download.value.path().read_text().strip().splitlines()[-1].split(",")
    assert last[:3] == ["TOTAL", str(total["notebooks"]), str(total["minutes"])]


def test_a_read_token_sees_no_button_and_a_cross_site_form_is_refused(cluster, notebooks, web):
    nb = cluster.cli_json("notebook", "run", "tiny", "httpd", "--gpu", "1", "--name", "watched")
    notebooks.append(nb["id"])
    cluster.wait_state(nb["id"], "RUNNING")
    created = cluster.cli("token", "create", "--role", "read", "-o", "json")
    read = json.loads(created.stdout)["token"]

    page = web.new_page()
    sign_in(page, cluster.url, read)
    wait_for_state(page, "watched", "RUNNING")
    expect(page.get_by_role("link", name="Run a notebook")).to_have_count(0)
    expect(row(page, "watched").get_by_role("button")).to_have_count(0)

    # Another site's page posting to the console: the session cookie (SameSite=Strict) is not
    # sent, and there is no CSRF token; nothing happens.
    operator = web.new_page()
    sign_in(operator, cluster.url, cluster.token)
    operator.set_content(
        f'<form method="post" action="{cluster.url}/console/notebooks/{nb["id"]}/stop">'
        '<input name="csrf" value="forged"></form>'
    )
    operator.evaluate("document.forms[0].submit()")
    operator.wait_for_load_state()
    assert cluster.notebook(nb["id"])["state"] == "RUNNING"


def test_an_operator_cordons_drains_and_uncordons_a_host(cluster, web):
    page = web.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, cluster.url, cluster.admin_token)
    expect(page).to_have_url(re.compile(r"/console/hosts$"))
    host = next(iter(cluster.agents))
    line = page.locator(f'tr[data-host="{host}"]')
    expect(line).to_contain_text("NVIDIA H100 80GB HBM3")
    for action, state in (("Cordon", "cordoned"), ("Drain", "cordoned"), ("Uncordon", "ready")):
        line.get_by_role("button", name=re.compile(f"^{action}")).click()
        expect(line.locator(".state")).to_have_text(state)
        hosts = cluster.api("GET", "/v1/admin/hosts", token=cluster.admin_token)["items"]
        assert {h["id"]: h["state"] for h in hosts}[host] == state
