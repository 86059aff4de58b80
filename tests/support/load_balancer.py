"""Scheduler replicas behind a real HAProxy, as processes, for the load balancer's tests.

API:

``HAPROXY_CFG``: ``deploy/haproxy.cfg``, the documented config; :class:`LoadBalancer` runs that
    very file, unchanged, giving it the test's addresses through the environment variables
    the file reads (HAProxy's own ``"${NAME-default}"`` expansion).

``haproxy_binary() -> str``: Debian's ``/usr/sbin/haproxy``; fails the test (never skips)
    saying what to install when it is missing.

``Replica(root, name, database_url)``: ``nbfleet-scheduler run`` on a port of its own, on the
    shared PostgreSQL database, with ``admin_token_file``, ``secrets_key_file`` and
    ``ssh_host_key_file`` in ``root`` (shared by every replica, as they must be). Its catalog's
    framework is described as ``name``: ``GET /v1/catalog`` tells which replica answered.
    ``start()`` (waits for its /health), ``kill()`` (SIGKILL), ``stop()``, ``command(*args)``
    (another ``nbfleet-scheduler`` subcommand on its config), ``url``, ``log``.

``LoadBalancer(root, replicas)``: ``haproxy -db -f deploy/haproxy.cfg`` on a port of its own,
    logging to its stdout (``log``); ``check()`` runs ``haproxy -c`` on the same environment,
    ``start()`` waits until HAProxy sees every replica UP, ``servers()`` is HAProxy's view
    (``show stat`` of the backend, by server name and ``BACKEND``), ``stop()``.

``Stack(root, database_url)``: two replicas (``replica-1``, ``replica-2``) and the load
    balancer. ``start()`` migrates the database and starts them one after the other (the first
    start creates the shared secret files), then creates project ``lb`` and a token of it
    through the load balancer. ``cli(*args, url=, admin=)`` runs ``python -m cli.main``;
    ``get(path, url=)`` is plain HTTP; ``answered_by()`` which replica answered a catalog
    request through the load balancer; ``dump()`` every log; ``stop()`` stops every process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.cluster import REPO, Router, free_port, scheduler_toml, wait_for
from tests.support.processes import http_get, nbfleet, scheduler_command, stop

HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
#: The backend's name in deploy/haproxy.cfg; its servers are replica1, replica2, ...
BACKEND = "nbfleet_schedulers"
#: The routers' backend (nbfleet-router): notebooks' stable URLs; servers router1, router2.
ROUTERS = "nbfleet_routers"
_MARKED = 'description = "busybox, for tests"'


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail(
            "the load balancer tests need HAProxy: install Debian's haproxy package "
            "(`apt-get install haproxy`; scripts/test does)",
            pytrace=False,
        )
    return found


class Replica:
    def __init__(self, root: Path, name: str, database_url: str) -> None:
        self.name = name
        self.port = free_port()
        self.config = root / f"{name}.toml"
        self.log = root / f"{name}.log"
        shared = (
            f'database_url = "{database_url}"\n'
            f'secrets_key_file = "{root}/agent_secrets.key"\n'
            f'ssh_host_key_file = "{root}/ssh_host_ed25519_key"\n'
        )
        # scheduler_toml's admin_token_file and agent_secrets_dir are in root too.
        text = shared + scheduler_toml(root, self.port)
        assert _MARKED in text, "scheduler_toml changed: mark the replicas another way"
        self.config.write_text(text.replace(_MARKED, f'description = "{name}"'))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler.main", "run", "--config", str(self.config)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(f"{self.name} {self.url}/health", self._healthy, 30)

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} exited"
        return http_get(self.url + "/health")[0] == 200

    def command(self, *args: str) -> str:
        return scheduler_command(self.config, *args)

    def kill(self) -> None:
        """SIGKILL: no graceful close of anything, as when its machine dies."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop(self.proc)


class LoadBalancer:
    def __init__(self, root: Path, replicas: list[Replica], routers: list[Router]) -> None:
        self.binary = haproxy_binary()
        self.port = free_port()
        self.log = root / "haproxy.log"
        # A Unix socket's path must stay under 108 bytes; pytest's tmp_path may not.
        self._sockdir = tempfile.mkdtemp(prefix="nbf-lb-")
        self.stats = Path(self._sockdir) / "admin.sock"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NBFLEET_")},
            "NBFLEET_LB_BIND": f"127.0.0.1:{self.port}",
            "NBFLEET_LB_LOG": "stdout",
            "NBFLEET_LB_STATS": str(self.stats),
        }
        for number, replica in enumerate(replicas, 1):
            self.env[f"NBFLEET_REPLICA_{number}"] = f"127.0.0.1:{replica.port}"
        for number, router in enumerate(routers, 1):
            self.env[f"NBFLEET_ROUTER_{number}"] = f"127.0.0.1:{router.port}"
        self.names = [f"replica{n}" for n in range(1, len(replicas) + 1)]
        self.router_names = [f"router{n}" for n in range(1, len(routers) + 1)]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> None:
        done = subprocess.run(
            [self.binary, "-c", "-f", str(HAPROXY_CFG)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, f"haproxy -c -f {HAPROXY_CFG}:\n{done.stdout}{done.stderr}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # -db: in the foreground (the test owns the process), logging to stdout.
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(HAPROXY_CFG)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("HAProxy to see every replica and router UP", self._all_up, 30)

    def _all_up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "haproxy exited"
        servers, routers = self.servers(), self.servers(ROUTERS)
        return all(servers.get(name, {}).get("status") == "UP" for name in self.names) and all(
            routers.get(name, {}).get("status") == "UP" for name in self.router_names
        )

    def admin(self, command: str) -> str:
        """One command on HAProxy's admin socket (the file's ``stats socket``)."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(self.stats))
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while data := conn.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def servers(self, backend: str = "") -> dict[str, dict[str, str]]:
        """``show stat`` of a backend (the replicas' by default): ``{server name or "BACKEND":
        {column: value}}``."""
        backend = backend or BACKEND
        header, *rows = self.admin("show stat").strip().splitlines()
        columns = header.lstrip("# ").split(",")
        stats = [dict(zip(columns, row.split(","), strict=False)) for row in rows]
        return {s["svname"]: s for s in stats if s["pxname"] == backend}

    def stop(self) -> None:
        stop(self.proc, 10)
        shutil.rmtree(self._sockdir, ignore_errors=True)


class Stack:
    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.replicas = [Replica(root, f"replica-{n}", database_url) for n in (1, 2)]
        # Routers ask either replica, with the token the replicas share (beside the admin
        # token); the load balancer sends /notebooks/ to them.
        urls = ",".join(r.url for r in self.replicas)
        self.routers = [Router(root / f"router-{n}", urls, root / "router.token") for n in (1, 2)]
        self.lb = LoadBalancer(root, self.replicas, self.routers)
        self.admin_token = ""
        self.token = ""

    def start(self) -> None:
        first = self.replicas[0]
        first.command("migrate")
        self.admin_token = first.command("admin-token").strip()
        for replica in self.replicas:
            replica.start()
        for router in self.routers:
            router.start()
        self.lb.check()
        self.lb.start()
        created = self.cli("admin", "project", "create", "lb", admin=True)
        assert created.returncode == 0, created.stderr
        token = self.cli("admin", "token", "create", "--project", "lb", "-o", "json", admin=True)
        assert token.returncode == 0, token.stderr
        self.token = json.loads(token.stdout)["token"]

    def cli(
        self, *args: str, url: str = "", admin: bool = False, token: str = ""
    ) -> subprocess.CompletedProcess:
        """``nbfleet ARGS`` at ``url`` (default: the load balancer) as the project's user (the
        operator with ``admin``, or ``token``)."""
        return nbfleet(
            url or self.lb.url, token or (self.admin_token if admin else self.token), *args
        )

    def get(self, path: str, url: str = "", **kwargs) -> tuple[int, bytes]:
        return http_get((url or self.lb.url) + path, **kwargs)

    def answered_by(self) -> str:
        """Which replica answered ``GET /v1/catalog`` through the load balancer."""
        status, body = self.get("/v1/catalog", token=self.token)
        assert status == 200, f"GET /v1/catalog through the load balancer: {status} {body!r}"
        return json.loads(body)["frameworks"][0]["description"]

    def dump(self) -> str:
        parts = []
        logs = [(r.name, r.log) for r in self.replicas] + [("haproxy", self.lb.log)]
        logs += [(f"router {r.url}", r.log) for r in self.routers]
        for name, path in logs:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-60:]
                title = f"----- {name} log (last {len(lines)} lines) -----"
                parts.append("\n".join([title, *lines]))
        if self.lb.proc is not None and self.lb.proc.poll() is None:
            try:
                parts.append("----- haproxy: show stat -----\n" + self.lb.admin("show stat"))
            except OSError as exc:
                parts.append(f"----- haproxy: show stat failed: {exc!r}")
        return "\n".join(parts)

    def stop(self) -> None:
        self.lb.stop()
        for router in self.routers:
            router.stop()
        for replica in self.replicas:
            replica.stop()
