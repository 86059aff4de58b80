"""Issue 14 with the real editors: an operator gives a project an idle timeout, a user asks for
a shorter one, and nobody opens the editor. JupyterLab's kernel running a long cell (started by
``@jupyterlab/services``, the client then gone, as when a tab is closed) keeps the notebook
running past the timeout; once the cell is done the idle notebook is stopped, the reason naming
what was idle. code-server in use from inside the notebook (its own heartbeat, which the agent
reads from ``/healthz`` without beating it) keeps a notebook running, and it is stopped once
code-server's heartbeat lapses. Real waits, short windows: the agents look every second."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests.browser.stack import require_jupyter_client, require_proxied
from tests.browser.test_jupyter_client import run_client
from tests.e2e.cluster import container_exec, wait_for

pytestmark = pytest.mark.browser

START_TIMEOUT_S = 180
PROJECT_TIMEOUT = "2m"
TIMEOUT_S = 20
#: The long cell: well beyond the timeout.
CELL_S = 2 * TIMEOUT_S + 10
#: code-server says it is alive for a minute after its last beat.
HEART_S = 60


class Project:
    """A project of the test's own, whose idle timeout its operator sets."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.name = f"idle-{secrets.token_hex(3)}"
        admin = cluster.admin_token
        cluster.cli("admin", "project", "create", self.name, token=admin)
        shown = cluster.cli(
            "admin", "project", "quota", self.name, "--idle-timeout", PROJECT_TIMEOUT, token=admin
        ).stdout
        assert "Idle notebooks stop after: 2 min" in shown, shown
        self.token = cluster.project_token(self.name)

    def run(self, *args: str) -> dict:
        out = self.cluster.cli(
            "notebook",
            "run",
            *args,
            "--idle-timeout",
            f"{TIMEOUT_S}s",
            "-o",
            "json",
            token=self.token,
        ).stdout
        nb = json.loads(out)
        assert nb["idle_timeout_s"] == TIMEOUT_S
        return self.wait(nb["id"], "RUNNING", START_TIMEOUT_S)

    def get(self, nb_id: str) -> dict:
        return self.cluster.api("GET", f"/v1/notebooks/{nb_id}", token=self.token)

    def wait(self, nb_id: str, state: str, timeout_s: float = 90) -> dict:
        return wait_for(
            f"notebook {nb_id} to be {state}",
            lambda: (nb := self.get(nb_id))["state"] == state and nb,
            timeout_s,
        )

    def running_for(self, nb_id: str, seconds: float) -> list[str]:
        """Poll the scheduler (never the notebook's URL: that is editor traffic) for
        ``seconds``; the notebook stays RUNNING throughout. The signals it showed."""
        signals: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            nb = self.get(nb_id)
            assert nb["state"] == "RUNNING", (nb["state"], nb["state_reason"], signals)
            signals.append(nb["idle"]["signal"])
            time.sleep(1)
        return signals

    def stopped_for_idling(self, nb_id: str, within_s: float) -> dict:
        left = wait_for(
            f"notebook {nb_id} to be stopped for being idle",
            lambda: (nb := self.get(nb_id))["state"] != "RUNNING" and nb,
            within_s,
        )
        assert left["state"] in ("STOPPING", "STOPPED"), left
        return self.wait(nb_id, "STOPPED")

    def delete(self, nb_id: str) -> None:
        if self.get(nb_id)["state"] in ("STARTING", "RUNNING"):
            self.cluster.api("POST", f"/v1/notebooks/{nb_id}/stop", token=self.token)
        wait_for(
            f"notebook {nb_id} to settle",
            lambda: self.get(nb_id)["state"] in ("STOPPED", "FAILED", "ERROR"),
            START_TIMEOUT_S,
        )
        self.cluster.api("DELETE", f"/v1/notebooks/{nb_id}", token=self.token)


@pytest.fixture(scope="module")
def project(cluster) -> Project:
    return Project(cluster)


@pytest.fixture
def owned(project):
    """Ids of the test's notebooks, deleted after it."""
    created: list[str] = []
    yield created
    for nb_id in created:
        project.delete(nb_id)


def reasons(nb: dict) -> list[tuple[str, str]]:
    return [(h["state"], h["reason"]) for h in nb["history"]]


def test_a_long_cell_keeps_jupyterlab_running_and_an_idle_kernel_does_not(project, owned):
    node = require_jupyter_client()
    too_long = project.cluster.cli(
        "notebook",
        "run",
        "conda",
        "jupyterlab",
        "--idle-timeout",
        "1h",
        token=project.token,
        check=False,
    )
    assert too_long.returncode == 1
    assert "a notebook may ask for a shorter idle timeout, not a longer one" in too_long.stderr

    nb = project.run("conda", "jupyterlab", "--cpu", "1")
    owned.append(nb["id"])
    require_proxied(nb)
    started = run_client(
        node,
        nb["url"],
        "token",
        project.token,
        "--leave-running",
        f"import time; time.sleep({CELL_S})",
    )
    cell_from = time.time()
    assert started["ok"] and started["busy"], started

    # Well past the timeout, the cell still running and nobody at the editor.
    signals = project.running_for(nb["id"], CELL_S - 10)
    assert signals[-1] == "kernel busy", signals

    stopped = project.stopped_for_idling(nb["id"], 10 + TIMEOUT_S + 60)
    reason = f"idle for {TIMEOUT_S} s: no editor traffic, kernels and terminals idle, CPU below 5%"
    assert ("STOPPING", reason) in reasons(stopped), reasons(stopped)
    stopped_at = next(h["at"] for h in stopped["history"] if h["reason"] == reason)
    # Idle only from the end of the cell.
    assert stopped_at - cell_from >= CELL_S + TIMEOUT_S - 3


def test_code_server_in_use_keeps_a_notebook_running_until_its_heartbeat_lapses(project, owned):
    nb = project.run("conda", "vscode", "--cpu", "1")
    owned.append(nb["id"])
    # Something in the notebook uses code-server (as an extension or a forwarded port would),
    # not through the proxy; it stops when /tmp/use goes.
    container_exec(
        nb["id"],
        "touch /tmp/use; (while [ -e /tmp/use ]; do python3 -c 'import urllib.request as u; "
        'u.urlopen("http://127.0.0.1:8080/robots.txt").read()\'; sleep 5; done) '
        ">/dev/null 2>&1 &",
    )
    signals = project.running_for(nb["id"], 2 * TIMEOUT_S)
    # What the requests cost in CPU may show as well ("CPU 6%"): either keeps it running.
    assert "code-server" in signals[TIMEOUT_S:], signals

    container_exec(nb["id"], "rm -f /tmp/use")
    quiet_from = time.time()
    stopped = project.stopped_for_idling(nb["id"], HEART_S + TIMEOUT_S + 60)
    reason = f"idle for {TIMEOUT_S} s: no editor traffic, code-server idle, CPU below 5%"
    assert ("STOPPING", reason) in reasons(stopped), reasons(stopped)
    stopped_at = next(h["at"] for h in stopped["history"] if h["reason"] == reason)
    assert stopped_at - quiet_from >= TIMEOUT_S - 2
