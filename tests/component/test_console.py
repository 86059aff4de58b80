"""Issue 15: the web console's server side through real HTTP (sessions, CSRF, roles, label
scopes, escaping, the run form's checks and its CLI command), on the fake clock. The browser
tier drives the same pages in Chromium."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.component.conftest import Agent, Harness, Tokens
from tests.component.test_scheduler_snapshots import report_snapshot, snapshot


class Browser:
    """A cookie-keeping client of the console, as a browser would be (no redirects followed)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        assert harness.client is not None
        self.client = harness.client

    async def get(self, path: str) -> tuple[int, str, Any]:
        async with self.client.get(path, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str, Any]:
        async with self.client.post(path, data=data, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp

    async def csrf(self, path: str) -> str:
        status, text, _ = await self.get(path)
        assert status == 200, text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', text)
        assert found, text
        return found.group(1)

    async def sign_in(self, token: str) -> Any:
        csrf = await self.csrf("/console/sign-in")
        status, text, resp = await self.post("/console/sign-in", {"csrf": csrf, "token": token})
        assert status == 303, text
        return resp


@pytest.fixture
def browser(harness: Harness) -> Browser:
    harness.client.session.cookie_jar.clear()
    return Browser(harness)


async def test_signing_in_keeps_the_token_in_a_strict_http_only_cookie_never_a_url(
    browser: Browser, project: Tokens
) -> None:
    status, _, resp = await browser.get("/console/notebooks")
    assert (status, resp.headers["Location"]) == (303, "/console/sign-in")
    resp = await browser.sign_in(project.operator)
    assert resp.headers["Location"] == "/console/notebooks"
    cookie = resp.cookies["nbfleet_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    assert project.operator not in cookie.value
    status, text, resp = await browser.get("/console/notebooks")
    assert status == 200
    assert project.operator not in text
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"
    # Signing out ends it.
    csrf = await browser.csrf("/console/notebooks")
    status, _, resp = await browser.post("/console/sign-out", {"csrf": csrf})
    assert (status, resp.headers["Location"]) == (303, "/console/sign-in")
    status, _, _ = await browser.get("/console/notebooks")
    assert status == 303


async def test_an_unknown_token_is_refused_and_a_forged_sign_in_too(
    browser: Browser, project: Tokens
) -> None:
    csrf = await browser.csrf("/console/sign-in")
    status, text, _ = await browser.post("/console/sign-in", {"csrf": csrf, "token": "nbf_nope"})
    assert status == 401 and "That token is not known here" in text
    status, text, _ = await browser.post(
        "/console/sign-in", {"csrf": "0" * 40, "token": project.operator}
    )
    assert status == 403 and "did not come from the console" in text


async def test_a_deleted_token_signs_its_sessions_out(
    browser: Browser, harness: Harness, project: Tokens
) -> None:
    created = await harness.call(
        "POST", "/v1/tokens", token=project.operator, body={"role": "read"}
    )
    token, token_id = created.json["token"], created.json["id"]
    await browser.sign_in(token)
    assert (await browser.get("/console/notebooks"))[0] == 200
    await harness.call("DELETE", f"/v1/tokens/{token_id}", token=project.operator)
    status, _, resp = await browser.get("/console/notebooks")
    assert (status, resp.headers["Location"]) == (303, "/console/sign-in")


async def test_running_from_the_form_creates_the_notebook_the_api_would(
    browser: Browser, harness: Harness, project: Tokens, host: Agent
) -> None:
    await browser.sign_in(project.operator)
    csrf = await browser.csrf("/console/notebooks/new")
    form = {
        "csrf": csrf,
        "framework": "conda",
        "editor": "jupyterlab",
        "gpu": "1",
        "name": "from-the-form",
        "labels": "team=vision\n",
        "envvars": "SEED=1",
        "idle_timeout": "30m",
        "restart_on_timeout": "on",
        "framework_version": "test",
    }
    status, text, resp = await browser.post("/console/notebooks/new", form)
    assert status == 303, text
    notebook_id = resp.headers["Location"].rsplit("/", 1)[1]
    nb = await project.get(notebook_id)
    assert (nb["name"], nb["gpu"], nb["labels"], nb["envvars"]) == (
        "from-the-form",
        1,
        {"team": "vision"},
        {"SEED": "1"},
    )
    assert nb["idle_timeout_s"] == 1800 and nb["restart_on_timeout"] is True
    status, text, _ = await browser.get(f"/console/notebooks/{notebook_id}")
    assert status == 200 and "from-the-form" in text and "placed on h1" in text
    assert 'data-fragment="summary"' in text
    # Its top part refreshes itself.
    await host.report(notebook_id, "RUNNING")
    status, text, _ = await browser.get(f"/console/notebooks/{notebook_id}?fragment=summary")
    assert status == 200 and "<html" not in text
    assert 'class="state state-running">RUNNING<' in text and "Open the editor" in text
    assert nb["framework_version"] == "test" and "conda test (nbfleet/conda:test)" in text
    # Env vars changed while it runs: the page says they wait for a restart.
    changed = await project.harness.call(
        "PUT", f"/v1/notebooks/{notebook_id}", token=project.operator, body={"envvars": {}}
    )
    assert changed.status == 200, changed.text
    status, text, _ = await browser.get(f"/console/notebooks/{notebook_id}?fragment=summary")
    assert "Waiting for a restart" in text and "envvars" in text


async def test_the_form_refuses_bad_input_with_the_apis_messages_and_keeps_it(
    browser: Browser, project: Tokens, host: Agent
) -> None:
    await browser.sign_in(project.operator)
    csrf = await browser.csrf("/console/notebooks/new")
    base = {"csrf": csrf, "framework": "conda", "editor": "jupyterlab"}
    for extra, message in [
        ({"gpu": "99"}, "Expected `int` &lt;= 16 - at `$.gpu`"),
        ({"name": "Bad Name"}, "at `$.name`"),
        ({"labels": "novalue"}, "labels: &#39;novalue&#39; is not KEY=VALUE"),
        ({"volumes": "bucket:/data"}, "missing &#39;@&#39;"),
        ({"idle_timeout": "soon"}, "idle timeout: &#39;soon&#39; is not a duration"),
        ({"gpu": "1", "idle_timeout": "5s"}, "at `$.idle_timeout_s`"),
        ({"framework": "nope"}, "nope"),
    ]:
        status, text, _ = await browser.post("/console/notebooks/new", {**base, **extra})
        assert status == 400, (extra, status, text)
        assert message in text, (extra, text)
    # What was typed stays in the form.
    status, text, _ = await browser.post(
        "/console/notebooks/new", {**base, "gpu": "99", "envvars": "A=1"}
    )
    assert 'value="99"' in text and ">A=1</textarea>" in text


async def test_the_form_shows_the_cli_command_that_asks_the_same(
    browser: Browser, project: Tokens
) -> None:
    await browser.sign_in(project.operator)
    status, text, _ = await browser.get(
        "/console/notebooks/new?framework=conda&editor=vscode&gpu=2&labels=team%3Dcv%20x"
        "&idle_timeout=30m&unsecure_http=on&fragment=command"
    )
    assert status == 200
    assert text == (
        "nbfleet notebook run conda vscode --gpu 2 --idle-timeout 30m --label 'team=cv x' "
        "--unsecure-http"
    )
    # A blank form asks for a GPU on a fleet with GPUs, a CPU on one without.
    status, text, _ = await browser.get("/console/notebooks/new")
    assert "nbfleet notebook run conda jupyterlab --cpu 1" in text
    await browser.harness.agent("h1").register(gpus=2)
    status, text, _ = await browser.get("/console/notebooks/new")
    assert "nbfleet notebook run conda jupyterlab --gpu 1" in text


async def test_a_forged_post_without_the_csrf_token_is_refused(
    browser: Browser, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    await browser.sign_in(project.operator)
    for data in ({}, {"csrf": "0" * 40}):
        status, text, _ = await browser.post(f"/console/notebooks/{nb['id']}/stop", data)
        assert status == 403 and "stale or did not come from the console" in text
    assert (await project.get(nb["id"]))["state"] == "STARTING"
    csrf = await browser.csrf(f"/console/notebooks/{nb['id']}")
    status, _, _ = await browser.post(f"/console/notebooks/{nb['id']}/stop", {"csrf": csrf})
    assert status == 303
    assert (await project.get(nb["id"]))["state"] == "STOPPING"


async def test_a_read_token_sees_no_button_it_may_not_use_and_cannot_post(
    browser: Browser, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    await browser.sign_in(project.read)
    status, text, _ = await browser.get("/console/notebooks")
    assert status == 200 and nb["name"] in text
    for button in (">Stop<", ">Start<", ">Delete<", "Run a notebook"):
        assert button not in text
    status, text, _ = await browser.get(f"/console/notebooks/{nb['id']}")
    assert ">Stop<" not in text
    csrf = await browser.csrf(f"/console/notebooks/{nb['id']}")
    status, text, _ = await browser.post(f"/console/notebooks/{nb['id']}/stop", {"csrf": csrf})
    assert status == 403 and "this needs role operator" in text


async def test_a_label_scoped_token_sees_only_its_notebooks(
    browser: Browser, harness: Harness, project: Tokens, host: Agent
) -> None:
    mine = (await project.run(gpu=1, labels={"team": "cv"}, name="mine")).json
    theirs = (await project.run(gpu=1, labels={"team": "nlp"}, name="theirs")).json
    created = await harness.call(
        "POST",
        "/v1/tokens",
        token=project.operator,
        body={"role": "operator", "label_selector": {"team": "cv"}},
    )
    await browser.sign_in(created.json["token"])
    _, text, _ = await browser.get("/console/notebooks")
    assert f'data-notebook="{mine["id"]}"' in text
    assert f'data-notebook="{theirs["id"]}"' not in text
    status, text, _ = await browser.get(f"/console/notebooks/{theirs['id']}")
    assert status == 403 and "labelled team=cv" in text


async def test_names_and_labels_are_escaped(browser: Browser, project: Tokens, host: Agent) -> None:
    await project.run(gpu=1, envvars={"X": "<script>alert(1)</script>"})
    await browser.sign_in(project.operator)
    # Labels cannot hold markup (the API refuses it); a bad filter is shown back escaped.
    status, text, _ = await browser.get('/console/notebooks?label="><script>alert(1)</script>')
    assert "<script>alert(1)" not in text
    assert status == 400 and "&lt;script&gt;" in text


async def test_the_list_refreshes_as_a_fragment(
    browser: Browser, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    await browser.sign_in(project.operator)
    status, text, _ = await browser.get("/console/notebooks?fragment=rows")
    assert status == 200 and text.lstrip().startswith("<tr") and nb["id"] in text
    assert "<html" not in text
    await host.report(nb["id"], "RUNNING")
    _, text, _ = await browser.get("/console/notebooks?state=RUNNING&fragment=rows")
    assert "RUNNING" in text and "/open" in text
    _, text, _ = await browser.get("/console/notebooks?state=STOPPED&fragment=rows")
    assert nb["id"] not in text


async def test_open_hands_the_editor_its_cookie_not_a_url_token(
    browser: Browser, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1)).json
    await browser.sign_in(project.operator)
    status, text, _ = await browser.get(f"/console/notebooks/{nb['id']}/open")
    assert status == 409 and "it opens while RUNNING" in text
    await host.report(nb["id"], "RUNNING")
    status, _, resp = await browser.get(f"/console/notebooks/{nb['id']}/open")
    assert status == 303
    assert resp.headers["Location"].endswith(f"/notebooks/{nb['id']}/")
    assert "token" not in resp.headers["Location"]
    cookie = resp.cookies["nbfleet_token"]
    assert cookie.value == project.operator and cookie["path"] == f"/notebooks/{nb['id']}/"
    assert cookie["httponly"]


async def test_operators_cordon_drain_and_uncordon_from_the_hosts_page(
    browser: Browser, harness: Harness, project: Tokens, host: Agent
) -> None:
    resp = await browser.sign_in(harness.admin_token)
    assert resp.headers["Location"] == "/console/hosts"
    status, text, _ = await browser.get("/console/hosts")
    assert status == 200 and 'data-host="h1"' in text and "A100: 2/2 free" in text
    for action, state in (("cordon", "cordoned"), ("uncordon", "ready"), ("drain", "cordoned")):
        csrf = await browser.csrf("/console/hosts")
        status, _, _ = await browser.post(f"/console/hosts/h1/{action}", {"csrf": csrf})
        assert status == 303
        hosts = await harness.call("GET", "/v1/admin/hosts", token=harness.admin_token)
        assert hosts.json["items"][0]["state"] == state, action
    # A project token does not reach the operator pages, nor the admin token a project's.
    status, _, _ = await browser.get("/console/notebooks")
    assert status == 303
    # Signed in, the sign-in page leads on; another token needs a sign-out first.
    status, _, resp = await browser.get("/console/sign-in")
    assert (status, resp.headers["Location"]) == (303, "/console/hosts")
    csrf = await browser.csrf("/console/hosts")
    await browser.post("/console/sign-out", {"csrf": csrf})
    await browser.sign_in(project.operator)
    status, text, _ = await browser.get("/console/hosts")
    assert status == 403 and "for operators" in text


async def test_a_notebooks_page_lists_its_backups_and_forks_one(
    browser: Browser, harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=1, name="source")).json
    await host.report(nb["id"], "RUNNING")
    await report_snapshot(host, nb["id"], snapshot("20261130T000000Z-aa", harness.clock() - 60))
    await browser.sign_in(project.operator)
    status, text, _ = await browser.get(f"/console/notebooks/{nb['id']}")
    assert status == 200 and 'data-backup="20261130T000000Z-aa"' in text
    assert 'data-logs="/console/notebooks/' in text and 'data-follow="yes"' in text
    csrf = await browser.csrf(f"/console/notebooks/{nb['id']}")
    status, text, resp = await browser.post(
        f"/console/notebooks/{nb['id']}/fork",
        {"csrf": csrf, "backup": "20261130T000000Z-aa", "name": "the-fork"},
    )
    assert status == 303, text
    fork_id = resp.headers["Location"].rsplit("/", 1)[1]
    fork = await project.get(fork_id)
    assert fork["name"] == "the-fork"
    assert fork["forked_from"] == {"notebook": nb["id"], "snapshot": "20261130T000000Z-aa"}
    status, text, _ = await browser.post(
        f"/console/notebooks/{nb['id']}/fork", {"csrf": csrf, "backup": "nope"}
    )
    assert status == 404 and "nope" in text
    # The output comes from the agent; one that cannot be reached is said where it would be.
    status, text, _ = await browser.get(f"/console/notebooks/{nb['id']}/logs")
    assert status == 502 and text.startswith("(no output: ")


async def test_usage_shows_the_apis_numbers_per_day_and_as_csv(
    browser: Browser, harness: Harness, project: Tokens, host: Agent
) -> None:
    nb = (await project.run(gpu=2, name="trainer")).json
    await host.report(nb["id"], "RUNNING")
    harness.clock.advance(3 * 3600)
    await host.usage(nb["id"], 180)
    api = await harness.call("GET", "/v1/projects/alpha/usage", token=project.read)
    total = api.json["total"]
    assert total["gpu_minutes"] == {"A100": 360}
    await browser.sign_in(project.read)
    status, text, _ = await browser.get("/console/usage")
    assert status == 200, text
    footer = re.search(r"<tr data-total>(.*?)</tr>", text, re.S).group(1)
    cells = re.findall(r'<td class="num">([^<]*)</td>', footer)
    assert cells[:3] == [str(total["notebooks"]), str(total["minutes"]), "360"]
    assert f'<th scope="row">{api.json["items"][0]["group"]}</th>' in text
    assert "GPU-minutes per day (total 360)" in text
    status, text, resp = await browser.get("/console/usage?format=csv")
    assert status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    lines = text.strip().splitlines()
    assert lines[0].startswith("group,notebooks,minutes,gpu_minutes_A100")
    assert lines[-1].startswith(f"TOTAL,{total['notebooks']},{total['minutes']},360,")
    status, text, _ = await browser.get("/console/usage?group_by=label")
    assert status == 400 and "label_key" in text


async def test_tokens_are_created_shown_once_and_deleted(
    browser: Browser, harness: Harness, project: Tokens
) -> None:
    await browser.sign_in(project.operator)
    csrf = await browser.csrf("/console/tokens")
    status, text, _ = await browser.post(
        "/console/tokens",
        {"csrf": csrf, "role": "read", "description": "for <b>ci</b>", "label_selector": "team=cv"},
    )
    assert status == 201, text
    token = re.search(r'<code id="new-token">([^<]+)</code>', text).group(1)
    assert "for &lt;b&gt;ci&lt;/b&gt;" in text and "notebooks labelled team=cv" in text
    listed = await harness.call("GET", "/v1/tokens", token=token)
    created = [t for t in listed.json["items"] if t["description"] == "for <b>ci</b>"]
    assert created and created[0]["label_selector"] == {"team": "cv"}
    # Never shown again.
    _, text, _ = await browser.get("/console/tokens")
    assert token not in text
    status, text, _ = await browser.post(
        "/console/tokens", {"csrf": csrf, "role": "boss", "label_selector": ""}
    )
    assert status == 400 and "$.role" in text
    status, _, _ = await browser.post(f"/console/tokens/{created[0]['id']}/delete", {"csrf": csrf})
    assert status == 303
    assert (await harness.call("GET", "/v1/tokens", token=token)).status == 401


async def test_datastores_are_added_without_showing_keys_and_deleted(
    browser: Browser, harness: Harness, project: Tokens
) -> None:
    await browser.sign_in(project.operator)
    csrf = await browser.csrf("/console/datastores")
    form = {
        "csrf": csrf,
        "alias": "lake",
        "endpoint": "https://s3.example.com",
        "region": "eu-west-1",
        "access_key": "AKIDEXAMPLE",
        "secret_key": "s3cr3t-value",
    }
    status, text, _ = await browser.post("/console/datastores", {**form, "endpoint": "ftp://x"})
    assert status == 400 and "$.endpoint" in text
    assert "s3cr3t-value" not in text and "AKIDEXAMPLE" not in text
    status, _, _ = await browser.post("/console/datastores", form)
    assert status == 303
    _, text, _ = await browser.get("/console/datastores")
    assert 'data-datastore="lake"' in text and "s3cr3t-value" not in text
    listed = await harness.call("GET", "/v1/datastores", token=project.read)
    assert [d["alias"] for d in listed.json["items"]] == ["lake"]
    status, _, _ = await browser.post("/console/datastores/lake/delete", {"csrf": csrf})
    assert status == 303
    assert (await harness.call("GET", "/v1/datastores", token=project.read)).json["items"] == []


async def test_operators_create_projects_and_change_quotas(
    browser: Browser, harness: Harness, project: Tokens
) -> None:
    await browser.sign_in(harness.admin_token)
    csrf = await browser.csrf("/console/projects")
    status, _, _ = await browser.post("/console/projects", {"csrf": csrf, "name": "vision"})
    assert status == 303
    status, text, _ = await browser.post("/console/projects", {"csrf": csrf, "name": "Bad!"})
    assert status == 400 and "$.name" in text
    status, _, _ = await browser.post(
        "/console/projects/vision/quota",
        {"csrf": csrf, "gpus": "8", "cpus": "", "idle_timeout": "60m"},
    )
    assert status == 303
    got = await harness.call("GET", "/v1/admin/projects/vision", token=harness.admin_token)
    assert got.json["quota"]["gpus"] == 8 and got.json["quota"]["idle_timeout_s"] == 3600
    assert got.json["quota"]["cpus"] == 256  # untouched: the default
    _, text, _ = await browser.get("/console/projects")
    assert 'data-project="vision"' in text and "60 min" in text
    status, text, _ = await browser.post(
        "/console/projects/vision/quota", {"csrf": csrf, "idle_timeout": "5s"}
    )
    assert status == 400 and "at least 10 seconds" in text
