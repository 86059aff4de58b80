"""nbfleet's systemd units under a real systemd, installed the way the README's operator
section says.

One machine (``tests/e2e/systemd_machine.py``: Debian's systemd as PID 1 in a container on
the real dockerd) runs both units, as a one-machine installation does. In it the test runs
the README's steps: ``pip install`` of this checkout into ``/opt/nbfleet`` (offline: the image
holds the dependencies, so the units always run the code under test), the links in
``/usr/local/bin``, the ``nbfleet`` user, ``/etc/nbfleet`` and the example configs edited
for this machine, the units from ``systemd/``, ``add-host`` and ``enable --now``. The agent
drives the host's dockerd and the session's SeaweedFS; its notebooks are the tiny image's.

Then: both units active, the scheduler answering ``/health``, the host in ``nbfleet admin
host list``; a notebook RUNNING and its editor reached through the scheduler's stable URL;
``systemctl restart nbfleet-agent`` leaves the notebook's container alone (same id, never
restarted, still RUNNING, served by the new agent process, which adopted it); ``systemctl
stop`` of both exits cleanly (status 0, no failed unit, no traceback), and stopping the
agent leaves the notebook running, as the agent unit's ``KillMode=process`` and the design
say ("SIGTERM / SIGINT stop the agent but never the notebooks").

The scheduler's database is a parameter: SQLite in the unit's StateDirectory, and PostgreSQL
on the throwaway cluster scripts/test runs (the machine shares the host's network, so the
cluster on 127.0.0.1 is reachable from the unit as it is from the test), migrated with
``nbfleet-scheduler migrate`` as an operator would before the first start.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.cluster import REPO, TINY_IMAGE, free_port, wait_for
from tests.e2e.systemd_machine import SYSTEMD_IMAGE, Machine, require_images
from tests.support.postgres import PostgresDatabases, postgres_url

pytestmark = pytest.mark.e2e

#: Host directories the agent hands to dockerd live here, at the same path in the machine.
#: Not under /tmp or /var/tmp (the agent unit's PrivateTmp= hides those from it) nor /home or
#: /root (ProtectHome=).
SHARED_ROOT = Path("/var/lib/nbfleet-e2e")
BUCKET = "nbfleet-systemd"
UNITS = ["nbfleet-scheduler.service", "nbfleet-agent.service", "nbfleet-router.service"]
SCHEDULER_TOML = "/etc/nbfleet/scheduler.toml"


@dataclass(frozen=True)
class SchedulerDatabase:
    """Where the scheduler under test keeps its state: top-level settings written into its
    scheduler.toml, and what the operator runs (as root, in the machine) before the first
    start."""

    name: str
    settings: dict[str, str | int | float] = field(default_factory=dict)
    prepare: str = ""


@pytest.fixture(params=["sqlite", "postgresql"])
def scheduler_database(request):
    if request.param == "sqlite":
        # SQLite: the example config's file in /var/lib/nbfleet/scheduler, the unit's
        # StateDirectory, made by systemd for the nbfleet user.
        yield SchedulerDatabase("sqlite")
        return
    # PostgreSQL: an empty database on the throwaway cluster scripts/test runs, migrated by
    # the operator's `nbfleet-scheduler migrate` before the first start (the unit refuses to
    # start a scheduler whose database lacks migrations).
    databases = PostgresDatabases(postgres_url())
    url = databases.empty()
    try:
        yield SchedulerDatabase(
            "postgresql",
            {"database_url": url},
            prepare=f"sudo -u nbfleet nbfleet-scheduler migrate --config {SCHEDULER_TOML}",
        )
    finally:
        databases.drop(url)
        databases.close()


def edit_toml(example: str, settings: dict[str, str | int | float]) -> str:
    """``example`` with top-level ``settings`` set, as an operator edits it: the line that
    sets a key before the first table is replaced where there is one, else the key is added
    at the top (so it stays top-level)."""
    first_table = re.search(r"^\[", example, flags=re.M)
    cut = first_table.start() if first_table else len(example)
    top, tables = example[:cut], example[cut:]
    added = []
    for key, value in settings.items():
        line = f"{key} = {json.dumps(value)}"
        top, found = re.subn(rf"^{re.escape(key)} = .*$", line, top, count=1, flags=re.M)
        if not found:
            added.append(line)
    return "\n".join([*added, top + tables])


def checkout_copy(target: Path) -> Path:
    """What ``pip install /path/to/this/checkout`` needs of it (pyproject.toml, the README it
    names, the packages it finds) and what the README installs from it (config/, systemd/):
    a copy, because pip builds in the source tree."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    target.mkdir(parents=True)
    for name in ["pyproject.toml", project["project"]["readme"]]:
        shutil.copy2(REPO / name, target / name)
    for name in [*packages, "config", "systemd"]:
        shutil.copytree(REPO / name, target / name, ignore=skip)
    return target


def fetch(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def docker_inspect(name: str) -> dict:
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


@dataclass
class Installation:
    """nbfleet installed on the machine: the scheduler at ``url`` (the same address from the
    test and from inside, host network), one agent as ``host_id``, a project ``e2e`` with an
    operator ``token``."""

    machine: Machine
    url: str
    host_id: str
    router_url: str = ""
    admin_token: str = ""
    token: str = ""

    def nbfleet(self, command: str, *, token: str) -> str:
        """``nbfleet COMMAND`` with the CLI installed in the machine (``/usr/local/bin``), as
        an operator runs it there; its output."""
        env = {"NBFLEET_URL": self.url, "NBFLEET_TOKEN": token}
        return self.machine.sh(f"nbfleet {command}", env=env).stdout

    def notebook(self, nb_id: str) -> dict:
        status, body = fetch(f"{self.url}/v1/notebooks/{nb_id}", self.token)
        assert status == 200, body
        return json.loads(body)

    def host(self) -> dict | None:
        hosts = json.loads(self.nbfleet("admin host list -o json", token=self.admin_token))
        return next((h for h in hosts if h["id"] == self.host_id), None)

    def healthy(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
            return resp.status == 200

    def router_healthy(self) -> bool:
        with urllib.request.urlopen(self.router_url + "/health", timeout=2) as resp:
            return resp.status == 200


def install(machine: Machine, fleet: Installation, database: SchedulerDatabase) -> None:
    """The README's steps, in the machine, with ``/operator/checkout`` as the checkout and
    ``/operator/etc`` holding the configs the operator edited."""
    # Offline: the image's venv holds the dependencies and setuptools, so a dependency the
    # image lacks fails here, by name (scripts/build-images --only systemd rebuilds it when
    # pyproject.toml's list changes).
    machine.sh(
        "/opt/nbfleet/bin/pip install -q --no-index --no-build-isolation /operator/checkout || "
        f"{{ echo 'rebuild {SYSTEMD_IMAGE}: scripts/build-images --only systemd' >&2; exit 1; }}\n"
        "ln -sf /opt/nbfleet/bin/nbfleet /opt/nbfleet/bin/nbfleet-scheduler "
        "/opt/nbfleet/bin/nbfleet-agent /opt/nbfleet/bin/nbfleet-router /usr/local/bin/"
    )
    machine.sh(
        "cd /operator/checkout\n"
        "useradd --system --home-dir /var/lib/nbfleet --shell /usr/sbin/nologin nbfleet\n"
        "install -d -o nbfleet -g nbfleet -m 0750 /etc/nbfleet /etc/nbfleet/agents\n"
        f"install -o root -g nbfleet -m 0640 /operator/etc/scheduler.toml {SCHEDULER_TOML}\n"
        "install -m 0644 systemd/nbfleet-scheduler.service /etc/systemd/system/\n"
        + (database.prepare + "\n" if database.prepare else "")
        + "systemctl daemon-reload && systemctl enable --now nbfleet-scheduler"
    )
    wait_for("the scheduler unit to answer /health", fleet.healthy, 30)
    fleet.admin_token = machine.sh(
        f"sudo -u nbfleet nbfleet-scheduler admin-token --config {SCHEDULER_TOML}"
    ).stdout.strip()
    # The agent's half, on the same machine: the secret from add-host alone in a root-only
    # file, the edited example config, the unit. /etc/nbfleet is the scheduler's already
    # (nbfleet, 0750), so the README's `install -d -m 0755 /etc/nbfleet`, for a GPU host of
    # its own, is left out.
    machine.sh(
        "cd /operator/checkout\n"
        f"secret=$(sudo -u nbfleet nbfleet-scheduler add-host {fleet.host_id} "
        f"--config {SCHEDULER_TOML})\n"
        '(umask 077; echo "$secret" > /etc/nbfleet/agent.secret)\n'
        "install -m 0600 /operator/etc/agent.toml /etc/nbfleet/agent.toml\n"
        "install -m 0644 systemd/nbfleet-agent.service /etc/systemd/system/\n"
        "systemctl daemon-reload && systemctl enable --now nbfleet-agent"
    )
    wait_for(f"host {fleet.host_id} in `nbfleet admin host list`", fleet.host, 60)
    # The router, on the same machine: the scheduler's router token is already where the
    # example config looks (/etc/nbfleet/router.token, beside the admin token).
    machine.sh(
        "cd /operator/checkout\n"
        "install -o root -g nbfleet -m 0640 /operator/etc/router.toml /etc/nbfleet/router.toml\n"
        "install -m 0644 systemd/nbfleet-router.service /etc/systemd/system/\n"
        "systemctl daemon-reload && systemctl enable --now nbfleet-router"
    )
    wait_for("the router unit to answer /health", fleet.router_healthy, 30)
    fleet.nbfleet("admin project create e2e", token=fleet.admin_token)
    created = fleet.nbfleet(
        "admin token create --project e2e --role operator -o json", token=fleet.admin_token
    )
    fleet.token = json.loads(created)["token"]


@pytest.fixture
def installation(tmp_path, s3_endpoint, scheduler_database):
    require_images(SYSTEMD_IMAGE, TINY_IMAGE)
    run_id = secrets.token_hex(3)
    shared = SHARED_ROOT / run_id
    machine = Machine(f"nbfleet-systemd-{run_id}", units=UNITS)
    fleet = Installation(
        machine,
        f"http://127.0.0.1:{free_port()}",
        f"systemd-{run_id}",
        router_url=f"http://127.0.0.1:{free_port()}",
    )
    operator = tmp_path / "operator"
    checkout = checkout_copy(operator / "checkout")
    etc = operator / "etc"
    etc.mkdir()
    scheduler_settings = {"listen": fleet.url.removeprefix("http://")}
    (etc / "scheduler.toml").write_text(
        edit_toml(
            (checkout / "config/scheduler.example.toml").read_text(),
            scheduler_settings | scheduler_database.settings,
        )
    )
    agent_settings = {
        "host_id": fleet.host_id,
        "scheduler_url": fleet.url,
        "listen": f"127.0.0.1:{free_port()}",
        "public_host": "127.0.0.1",
        "ssh_listen": f"127.0.0.1:{free_port()}",
        "workspaces_dir": str(shared / "workspaces"),
        "scratch_dir": str(shared / "scratch"),
        "volumes_dir": str(shared / "volumes"),
        "state_dir": str(shared / "agent"),
        "s3_endpoint": s3_endpoint,
        "s3_access_key": "e2e",
        "s3_secret_key": "e2e-secret",
        "workspace_bucket": BUCKET,
    }
    (etc / "agent.toml").write_text(
        edit_toml((checkout / "config/agent.example.toml").read_text(), agent_settings)
    )
    (etc / "router.toml").write_text(
        edit_toml(
            (checkout / "config/router.example.toml").read_text(),
            {"listen": fleet.router_url.removeprefix("http://"), "scheduler_url": fleet.url},
        )
    )
    shared.mkdir(parents=True)
    try:
        machine.boot(shared=[shared], mounts={operator: "/operator"})
        install(machine, fleet, scheduler_database)
    except BaseException:
        print(machine.dump())
        _remove(machine, fleet.host_id, shared)
        raise
    yield fleet
    _remove(machine, fleet.host_id, shared)


def _remove(machine: Machine, host_id: str, shared: Path) -> None:
    """The machine, then what its agent left in the host's dockerd (the notebooks it kept
    running when it stopped, their networks), then the shared directories."""
    machine.remove()
    label = f"label=nbfleet.host={host_id}"
    for kind in ("container", "network"):
        listed = subprocess.run(
            ["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter", label],
            capture_output=True,
            text=True,
        ).stdout.split()
        if listed:
            remove = ["rm", "-f"] if kind == "container" else ["rm"]
            subprocess.run(["docker", kind, *remove, *listed], capture_output=True)
    shutil.rmtree(shared, ignore_errors=True)
    with contextlib.suppress(OSError):  # another run's directory may still be there
        SHARED_ROOT.rmdir()


def test_units_start_restart_and_stop_under_systemd(installation):
    fleet, machine = installation, installation.machine
    try:
        _start_restart_stop(fleet, machine)
    except BaseException:
        print(machine.dump())
        raise


def _start_restart_stop(fleet: Installation, machine: Machine) -> None:
    assert fleet.healthy()
    for unit in UNITS:
        state = machine.show(unit, "ActiveState", "UnitFileState")
        assert state == {"ActiveState": "active", "UnitFileState": "enabled"}, (unit, state)
    host = fleet.host()
    assert host is not None and host["state"] == "ready", host

    # A notebook, from the machine's CLI, RUNNING in the host's dockerd.
    nb = json.loads(fleet.nbfleet("notebook run tiny httpd --cpu 1 -o json", token=fleet.token))
    assert nb["host"] == fleet.host_id
    wait_for(
        f"notebook {nb['id']} to be RUNNING",
        lambda: fleet.notebook(nb["id"])["state"] == "RUNNING",
        90,
    )
    container = f"nbfleet-{nb['id']}"
    before = docker_inspect(container)
    subprocess.run(
        ["docker", "exec", container, "sh", "-c", "echo served > /workspace/hello.txt"],
        check=True,
    )
    editor = f"{fleet.url}/notebooks/{nb['id']}/hello.txt"
    assert fetch(editor, fleet.token) == (200, b"served\n")
    history = fleet.notebook(nb["id"])["history"]

    # Restart: a new agent process adopts the container and serves it; nothing is restarted.
    agent = machine.show("nbfleet-agent", "MainPID")
    machine.sh("systemctl restart nbfleet-agent")
    after = machine.show("nbfleet-agent", "ActiveState", "MainPID", "InvocationID", "NRestarts")
    assert after["ActiveState"] == "active" and after["NRestarts"] == "0", after
    assert after["MainPID"] != agent["MainPID"]
    wait_for(
        "the restarted agent to register again",
        lambda: "registered with" in machine.journal("nbfleet-agent", after["InvocationID"]),
        60,
    )
    wait_for(
        "the restarted agent's proxy to serve the notebook",
        lambda: fetch(editor, fleet.token) == (200, b"served\n"),
        30,
    )
    journal = machine.journal("nbfleet-agent", after["InvocationID"])
    assert f"notebook={nb['id']} generation=1 adopting container (status running)" in journal
    kept = docker_inspect(container)
    assert kept["Id"] == before["Id"]
    assert kept["State"]["Running"] and kept["RestartCount"] == 0
    assert kept["State"]["StartedAt"] == before["State"]["StartedAt"]
    nb_after = fleet.notebook(nb["id"])
    assert nb_after["state"] == "RUNNING" and nb_after["history"] == history

    # The router serves the stable URL as well, and goes on serving it while the scheduler is
    # stopped (from what it remembers; the agent admits the token on its grace).
    at_router = f"{fleet.router_url}/notebooks/{nb['id']}/hello.txt"
    assert fetch(at_router, fleet.token) == (200, b"served\n")
    machine.sh("systemctl stop nbfleet-scheduler")

    def served_from_memory() -> bool:
        # Every answer is the editor's; once the router's last lookup (1 s) is stale, it
        # finds no scheduler and says it serves from memory.
        assert fetch(at_router, fleet.token) == (200, b"served\n")
        return "served at its last known host" in machine.journal("nbfleet-router")

    wait_for("the router to serve the notebook from memory", served_from_memory, 15)
    machine.sh("systemctl start nbfleet-scheduler")
    wait_for("the scheduler unit to answer /health again", fleet.healthy, 30)

    # Stop: each exits on SIGTERM with status 0 (not killed at TimeoutStopSec); the notebook
    # keeps running without its agent, and the scheduler still has it RUNNING.
    machine.sh("systemctl stop nbfleet-agent")
    assert docker_inspect(container)["State"]["Running"]
    assert fleet.notebook(nb["id"])["state"] == "RUNNING"
    machine.sh("systemctl stop nbfleet-scheduler nbfleet-router")
    for unit in UNITS:
        stopped = machine.show(
            unit, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts"
        )
        assert stopped == {
            "ActiveState": "inactive",
            "Result": "success",
            "ExecMainCode": "1",  # CLD_EXITED: it exited by itself, status 0
            "ExecMainStatus": "0",
            "NRestarts": "0",
        }, (unit, stopped)
        assert "Traceback" not in machine.journal(unit), unit
    assert machine.failed_units() == []
    assert "stopping (notebooks keep running)" in machine.journal("nbfleet-agent")
    assert docker_inspect(container)["Id"] == before["Id"]
