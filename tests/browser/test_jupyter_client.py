"""Any Jupyter client works at a notebook's URL (issue 11): ``@jupyterlab/services``, the library
VS Code's Jupyter extension and JupyterLab's own front end talk to a Jupyter server with, at the
version that extension ships (``jupyter_client/``, run by Node), is given the URL exactly as the
API returns it and a project token, sent each way Jupyter clients send one. It lists the
kernelspecs, runs ``21*2`` over the kernel's WebSocket and gets ``42``, writes a file through
the Contents API and reads it back, and shuts its kernel down. Another project's token is
refused with 403, no token with 401, as the client sees them."""

from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest

from tests.browser.stack import JUPYTER_CLIENT_DIR, require_jupyter_client, require_proxied
from tests.e2e.cluster import wait_for

pytestmark = pytest.mark.browser

START_TIMEOUT_S = 180
#: The client's own deadline (a first kernel in a fresh container on a busy 2-core machine
#: takes a while); the process is killed a little after it, so nothing here can hang.
CLIENT_TIMEOUT_S = 150
TOKEN_FORMS = ["token", "bearer", "query"]


@pytest.fixture(scope="module")
def node() -> str:
    return require_jupyter_client()


@pytest.fixture(scope="module")
def notebook(cluster):
    """One running conda/jupyterlab notebook for the module, deleted at its end."""
    nb = cluster.cli_json("notebook", "run", "conda", "jupyterlab")
    try:
        running = cluster.wait_state(nb["id"], "RUNNING", START_TIMEOUT_S)
        require_proxied(running)
        yield running
    finally:
        delete_notebook(cluster, nb["id"])


@pytest.fixture(scope="module")
def read_token(cluster) -> str:
    """A read token of the notebook's project: the least a user opening an editor has."""
    created = cluster.cli("token", "create", "--role", "read", "-o", "json")
    return json.loads(created.stdout)["token"]


@pytest.fixture(scope="module")
def other_project_token(cluster) -> str:
    other = f"other-{secrets.token_hex(3)}"
    cluster.cli("admin", "project", "create", other, token=cluster.admin_token)
    return cluster.project_token(other)


def delete_notebook(cluster, nb_id: str) -> None:
    if cluster.notebook(nb_id)["state"] in ("QUEUED", "STARTING", "RUNNING"):
        cluster.api("POST", f"/v1/notebooks/{nb_id}/stop")
    wait_for(
        f"notebook {nb_id} to settle before its delete",
        lambda: cluster.notebook(nb_id)["state"] in ("STOPPED", "FAILED", "ERROR"),
        START_TIMEOUT_S,
    )
    cluster.api("DELETE", f"/v1/notebooks/{nb_id}")
    cluster.wait_state(nb_id, "DELETED")


def run_client(node: str, url: str, auth: str, token: str | None, *extra: str) -> dict:
    """Run jupyter_client/client.mjs against ``url`` (``extra``: more of its options); its one
    JSON line, as a dict."""
    env = dict(os.environ)
    env.pop("NBFLEET_JUPYTER_TOKEN", None)
    if token is not None:
        env["NBFLEET_JUPYTER_TOKEN"] = token
    command = [node, "client.mjs", "--base-url", url, "--auth", auth, *extra]
    try:
        done = subprocess.run(
            [*command, "--timeout", str(CLIENT_TIMEOUT_S)],
            cwd=JUPYTER_CLIENT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S + 30,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{' '.join(command)} did not exit within {CLIENT_TIMEOUT_S + 30} s\n"
            f"stderr: {exc.stderr}"
        ) from None
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode} without its JSON line\n"
            f"stdout: {done.stdout}\nstderr: {done.stderr}"
        ) from None
    assert (done.returncode == 0) == result["ok"], (done.returncode, result)
    result["stderr"] = done.stderr[-4000:]
    return result


@pytest.mark.parametrize("auth", TOKEN_FORMS)
def test_a_jupyter_client_runs_a_cell_and_round_trips_a_file(node, notebook, read_token, auth):
    url = notebook["url"]
    assert url.endswith(f"/notebooks/{notebook['id']}/"), url

    result = run_client(node, url, auth, read_token)

    assert result["ok"], f"the client failed with the token as {auth!r}: {result}"
    assert "python3" in result["kernelspecs"], result
    assert result["execute_result"] == "42", result
    assert result["file"]["read"] == result["file"]["written"], result
    assert result["kernel_shut_down"], result


def test_a_jupyter_client_without_a_token_is_refused(node, notebook):
    result = run_client(node, notebook["url"], "none", None)

    assert not result["ok"], result
    assert (result["step"], result["status"]) == ("kernelspecs", 401), result


@pytest.mark.parametrize("auth", TOKEN_FORMS)
def test_a_jupyter_client_with_another_projects_token_is_refused(
    node, notebook, other_project_token, auth
):
    result = run_client(node, notebook["url"], auth, other_project_token)

    assert not result["ok"], result
    assert (result["step"], result["status"]) == ("kernelspecs", 403), result
