"""Agents and the CLI with several scheduler URLs, as processes: a real ``nbfleet-scheduler``
behind one URL, a URL that gives no answer (nothing listening, or a load balancer's 503 page)
behind the other, in either order. The agent (a real ``nbfleet-agent`` on the real dockerd)
registers and heartbeats through the live one and stays with it; the CLI lists notebooks
through it. Then the scheduler moves to the other URL, as when one replica stops and another
serves the same database: the agent's heartbeats, its long-poll and its reports follow it, and
a notebook run through the CLI there reaches RUNNING (real S3, the tiny image).

The scheduler's database, logs and configs live in the test's temporary directory; on failure
the scheduler's and the agent's logs are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import REPO, TINY_IMAGE, free_port, scheduler_toml, wait_for
from tests.support.processes import nbfleet, scheduler_command, stop
from tests.support.s3server import S3Server
from tests.support.unanswering import ProxyWithoutReplicas, refused_url

pytestmark = pytest.mark.integration


class Scheduler:
    """``nbfleet-scheduler run`` on a port of its own; ``root`` holds the database, so a
    second one on the same ``root`` serves the same state (one at a time: SQLite)."""

    def __init__(self, root: Path, name: str, image: str) -> None:
        self.root = root
        self.port = free_port()
        self.config = root / f"{name}.toml"
        self.log = root / f"{name}.log"
        self.config.write_text(scheduler_toml(root, self.port).replace(TINY_IMAGE, image))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.main", "run", "--config", str(self.config)],
            cwd=REPO,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(f"scheduler {self.url}/health", lambda: self._health(), 30)

    def _health(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the scheduler exited"
        with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
            return resp.status == 200

    def command(self, *args: str) -> str:
        return scheduler_command(self.config, *args)

    def stop(self) -> None:
        stop(self.proc)

    def host(self, admin_token: str, host_id: str) -> dict | None:
        req = urllib.request.Request(self.url + "/v1/admin/hosts")
        req.add_header("Authorization", f"Bearer {admin_token}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            hosts = json.loads(resp.read())["items"]
        return next((h for h in hosts if h["id"] == host_id), None)


class Fleet:
    """One scheduler (``first``), a second config on the same database (``second``, started
    only when a test moves the scheduler), an agent process, and the CLI as a process."""

    def __init__(self, root: Path, image: str) -> None:
        self.root = root
        self.first = Scheduler(root, "first", image)
        self.second = Scheduler(root, "second", image)
        self.host_id = f"failover-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        self.agent: subprocess.Popen | None = None
        self.agent_log = root / "agent.log"
        self.admin_token = ""
        self.token = ""

    def start_scheduler(self) -> None:
        """The first scheduler, with project ``failover`` and a user token of it."""
        self.first.start()
        self.admin_token = self.first.command("admin-token").strip()
        urls = [self.first.url]
        assert self.cli(urls, "admin", "project", "create", "failover", admin=True).returncode == 0
        created = self.cli(
            urls, "admin", "token", "create", "--project", "failover", "-o", "json", admin=True
        )
        assert created.returncode == 0, created.stderr
        self.token = json.loads(created.stdout)["token"]

    def start_agent(
        self, scheduler_url: list[str], env_url: str | None = None, s3: S3Server | None = None
    ) -> None:
        secret = self.first.command("add-host", self.host_id).strip().splitlines()[-1]
        (self.root / "agent.secret").write_text(secret + "\n")
        config = self.root / "agent.toml"
        config.write_text(
            f"host_id = {json.dumps(self.host_id)}\n"
            f"scheduler_url = {json.dumps(scheduler_url)}\n"
            f'secret_file = "{self.root}/agent.secret"\n'
            f'listen = "127.0.0.1:{free_port()}"\n'
            f'workspaces_dir = "{self.root}/workspaces"\n'
            f'scratch_dir = "{self.root}/scratch"\n'
            f'volumes_dir = "{self.root}/volumes"\n'
            f'state_dir = "{self.root}/agent-state"\n'
            + (
                f's3_endpoint = "{s3.endpoint}"\n'
                f's3_access_key = "{s3.access_key}"\n'
                f's3_secret_key = "{s3.secret_key}"\n'
                f'workspace_bucket = "failover-{os.getpid()}"\n'
                "start_timeout_s = 60\n"
                "reconcile_interval_s = 0.5\n"
                if s3 is not None
                else ""
            )
        )
        env = dict(os.environ)
        if env_url is not None:
            env["NBFLEET_AGENT_SCHEDULER_URL"] = env_url
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "run", "--config", str(config)],
            cwd=REPO,
            stdout=open(self.agent_log, "ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def registered_host(self, scheduler: Scheduler) -> dict:
        def probe() -> dict | None:
            assert self.agent is not None and self.agent.poll() is None, "the agent exited"
            return scheduler.host(self.admin_token, self.host_id)

        return wait_for(f"host {self.host_id} registered at {scheduler.url}", probe, 30)

    def heartbeats_after(self, scheduler: Scheduler, since: float) -> float:
        """Wait for a heartbeat stamped after ``since`` at ``scheduler``; its time."""

        def probe() -> float | None:
            host = scheduler.host(self.admin_token, self.host_id)
            beat = host["last_heartbeat"] if host else 0.0
            return beat if beat > since else None

        return wait_for(f"a heartbeat from {self.host_id} at {scheduler.url}", probe, 20)

    def cli(self, urls: list[str], *args: str, admin: bool = False) -> subprocess.CompletedProcess:
        """``nbfleet ARGS`` with ``NBFLEET_URL`` listing ``urls``, as the project's user (the
        operator with ``admin``)."""
        return nbfleet(urls, self.admin_token if admin else self.token, *args)

    def stop(self) -> None:
        stop(self.agent)
        self.first.stop()
        self.second.stop()
        # The notebook's container, then its network (Docker has a few dozen address pools:
        # networks left behind by one run make a later run's notebooks fail to start).
        for listing, remove in (("ps -aq", "rm -f"), ("network ls -q", "network rm")):
            subprocess.run(
                f"docker {listing} --filter label=nbfleet.host={self.host_id} "
                f"| xargs -r docker {remove}",
                shell=True,
                capture_output=True,
            )

    def dump(self) -> str:
        parts = []
        for name, path in [
            ("first scheduler", self.first.log),
            ("second scheduler", self.second.log),
            ("agent", self.agent_log),
        ]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-60:]
                parts.append(
                    f"----- {name} log (last {len(lines)} lines) -----\n" + "\n".join(lines)
                )
        return "\n".join(parts)

    def agent_says(self, text: str) -> bool:
        return text in self.agent_log.read_text(errors="replace")


@pytest.fixture
def fleet(tmp_path: Path, tiny_image: str) -> Iterator[Fleet]:
    """``tiny_image`` also fails the test when dockerd, which the agent drives, is missing."""
    running = Fleet(tmp_path, tiny_image)
    try:
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def logs_on_failure(fleet: Fleet) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(fleet.dump())
        raise


@pytest.fixture
def proxy() -> Iterator[ProxyWithoutReplicas]:
    lb = ProxyWithoutReplicas(503)
    yield lb
    lb.close()


@pytest.mark.parametrize("dead", ["refused", "proxy 503"])
@pytest.mark.parametrize("live_first", [False, True])
def test_agent_and_cli_work_through_the_live_url_and_stay_with_it(
    fleet: Fleet, proxy: ProxyWithoutReplicas, dead: str, live_first: bool
) -> None:
    with logs_on_failure(fleet):
        fleet.start_scheduler()
        live = fleet.first.url
        dead_url = proxy.url if dead == "proxy 503" else refused_url()
        urls = [live, dead_url] if live_first else [dead_url, live]
        fleet.start_agent(urls)
        host = fleet.registered_host(fleet.first)
        beat = fleet.heartbeats_after(fleet.first, host["last_heartbeat"])
        hits = proxy.hits
        fleet.heartbeats_after(fleet.first, beat)  # and the next one: it keeps heartbeating
        assert proxy.hits == hits, "the agent went back to the URL that gave no answer"
        if live_first:
            assert proxy.hits == 0
            assert not fleet.agent_says("switched to scheduler")
        else:
            assert fleet.agent_says(f"host={fleet.host_id} switched to scheduler {live}")

        # A CPU notebook on a cordoned host waits in the queue: a notebook to list, and no
        # container needed for it.
        cordon = fleet.cli(urls, "admin", "host", "cordon", fleet.host_id, admin=True)
        assert cordon.returncode == 0, cordon.stderr
        run = fleet.cli(urls, "notebook", "run", "tiny", "httpd", "--cpu", "1", "-o", "json")
        assert run.returncode == 0, run.stderr
        notebook = json.loads(run.stdout)
        assert notebook["state"] == "QUEUED"
        listed = fleet.cli(urls, "notebook", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert [nb["id"] for nb in json.loads(listed.stdout)] == [notebook["id"]]
        # Each CLI process starts at the first URL: with the proxy first, each asked it once.
        expected = 0 if live_first or dead != "proxy 503" else 3
        assert proxy.hits - hits == expected


def test_agent_and_cli_follow_the_scheduler_to_its_other_url(fleet: Fleet, s3) -> None:
    """The scheduler serving the first URL stops, one on the second URL serves the same
    database: the agent, sticking to the first URL until then, moves to the second with its
    heartbeats, its long-poll and its reports, and the CLI reaches it."""
    with logs_on_failure(fleet):
        fleet.start_scheduler()
        urls = [fleet.first.url, fleet.second.url]
        # The environment's list wins over the file's single URL.
        fleet.start_agent([fleet.first.url], env_url=",".join(urls), s3=s3)
        host = fleet.registered_host(fleet.first)
        fleet.heartbeats_after(fleet.first, host["last_heartbeat"])
        fleet.first.stop()  # the agent's long-poll was waiting there
        stopped_at = time.time()
        fleet.second.start()
        beat = fleet.heartbeats_after(fleet.second, stopped_at)
        fleet.heartbeats_after(fleet.second, beat)
        wait_for(
            "the agent to log its switch",
            lambda: fleet.agent_says(
                f"host={fleet.host_id} switched to scheduler {fleet.second.url}"
            ),
            10,
        )
        # Only the agent's long-poll at the second URL tells it about this notebook, and only
        # its reports there make the notebook RUNNING.
        run = fleet.cli(
            urls, "notebook", "run", "tiny", "httpd", "--cpu", "1", "--wait", "--timeout", "90"
        )
        assert run.returncode == 0, run.stderr + run.stdout
        listed = fleet.cli(urls, "notebook", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        [notebook] = json.loads(listed.stdout)
        assert (notebook["state"], notebook["host"]) == ("RUNNING", fleet.host_id)


def test_the_cli_names_every_url_when_none_answers(fleet: Fleet, proxy) -> None:
    refused = refused_url()
    fleet.token = "nbf_unchecked"  # nothing answers to check it
    result = fleet.cli([refused, proxy.url], "notebook", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("nbfleet: cannot reach the scheduler at any of its 2 URLs:")
    assert refused in result.stderr and f"{proxy.url} (HTTP 503 Service Unavailable)" in (
        result.stderr
    )
