"""scripts/bench-access: what a notebook's stable URL costs over the agent direct (issue 11).

    scripts/bench-access [--repeats 7] [--requests 500] [--download-mib 256]
                         [--ws-small-bytes 1024] [--ws-small-messages 1000]
                         [--ws-large-mib 1] [--ws-large-messages 64]
                         [--download-client curl|aiohttp] [--keep] [--json]

Brings up on 127.0.0.1, each a process of its own, in a temporary directory (logs there):

* this checkout's scheduler, ``python -m scheduler.main run``, with a one-editor catalog;
* nbfleet's agent (bench/access_agent.py), with a secret from ``scheduler.main add-host``: its
  real HTTP server, editor proxy and token checks, registering, heartbeating and reporting
  over the signed agent protocol; only Docker, NVML and S3 are stood in for, and they are not
  on the measured path (the module says how);
* the stand-in editor (bench/access_editor.py), which that agent starts from the catalog's
  command for the notebook, as it would start JupyterLab's container.

Then, as a user: a project and a ``read`` token through the admin API, a CPU notebook run with
an ``operator`` token, until the agent reports it RUNNING. Nothing is told to the scheduler
that an agent would not tell it, so the stable URL is served exactly as in production:
scheduler (forward.py) → agent's proxy (token checked with the scheduler, cached) → editor.

Measured with the same client on both paths, the stable URL ``{scheduler}/notebooks/{id}/``
and the agent's ``{agent}/notebooks/{id}/`` (direct), alternating which goes first, for
``--repeats`` repetitions; each figure is the median of its repetitions:

* small GET: ``--requests`` sequential requests on one keep-alive connection: p50, p99 (ms);
* download: ``--download-mib`` MiB, by curl into /dev/null (``--download-client aiohttp``:
  the bench's aiohttp client): MB/s (10^6 bytes), and the CPU seconds the scheduler and the
  agent spent on it per GB (/proc/PID/schedstat), which is what the hop costs the fleet;
* WebSocket: round trips of binary messages echoed by the editor, one at a time:
  ``--ws-small-messages`` of ``--ws-small-bytes`` (round trips/s) and ``--ws-large-messages``
  of ``--ws-large-mib`` MiB (MB/s of payload echoed).

Prints a table (figure, direct, stable URL, stable / direct) and whether the download through
the stable URL was at least half as fast as direct, issue 11's goal; ``--json`` prints one
JSON object instead (bench/access_report.py). Client, scheduler, agent and editor share this
machine's CPUs, so the stable path, one process longer, also pays for the CPU the scheduler
takes from the others; on a fleet the scheduler runs elsewhere. Exits 2 when a process died
or a path answered something else than the editor sends (with the tail of the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import access_measure as measure
from bench import access_report as report
from bench.scheduler_server import (
    SchedulerDied,
    SchedulerProcess,
    checkout_commit,
    free_port,
    terminate,
)

REPO = Path(__file__).resolve().parents[2]
HOST = "bench-access"
PROJECT = "bench"
FRAMEWORK = "bench"
EDITOR = "stand-in"
MIB = 1024 * 1024

log = logging.getLogger("bench-access")


class SetupFailed(Exception):
    """The stack did not come up, or a path answered something else than the editor sends."""


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has used so far, from Linux's /proc/PID/schedstat (nanoseconds;
    /proc/PID/stat counts 10 ms ticks, too coarse for a small download); 0 if unknown."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class AgentProcess:
    """``python -m bench.access_agent --config agent.toml``, stderr in ``log_path``."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'scripts'}"}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.access_agent", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def cpu_seconds(self) -> float:
        return 0.0 if self.proc is None else cpu_seconds(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SetupFailed(f"the agent exited with code {self.proc.returncode}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the agent stops the editor it started), then SIGKILL."""
        terminate(self.proc, timeout_s)


def scheduler_toml(workdir: Path, port: int, editor_port: int, large_bytes: int) -> str:
    command = [sys.executable, "-m", "bench.access_editor", "--port", "{port}"]
    command += ["--token", "{token}", "--base-url", "{base_url}", "--large-bytes", str(large_bytes)]
    return f"""\
listen = "127.0.0.1:{port}"
database = "{workdir / "scheduler.db"}"
admin_token_file = "{workdir / "admin.token"}"
agent_secrets_dir = "{workdir / "agents"}"

[catalog.frameworks.{FRAMEWORK}]
image = "nbfleet/bench-access:none"
editors = ["{EDITOR}"]

[catalog.editors.{EDITOR}]
port = {editor_port}
command = {json.dumps(command)}
url_path = "/"
"""


def agent_toml(workdir: Path, scheduler_port: int, port: int) -> str:
    root = workdir / "agent"
    return f"""\
host_id = "{HOST}"
scheduler_url = "http://127.0.0.1:{scheduler_port}"
secret_file = "{root / "secret"}"
listen = "127.0.0.1:{port}"
public_host = "127.0.0.1"
workspaces_dir = "{root / "workspaces"}"
scratch_dir = "{root / "scratch"}"
state_dir = "{root / "state"}"
volumes_dir = "{root / "volumes"}"
reconcile_interval_s = 0.2
# No workspace snapshot in the middle of a measurement.
checkpoint_interval_s = 0
"""


def scheduler_command(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.main", *args, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SetupFailed(f"scheduler.main {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


async def poll(what: str, probe, timeout_s: float, check_alive) -> None:
    """Await ``probe()`` until it is true; fail saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    last = "not yet"
    while time.monotonic() < deadline:
        check_alive()
        try:
            if await probe():
                return
        except (aiohttp.ClientError, OSError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise SetupFailed(f"timed out after {timeout_s:.0f}s waiting for {what} ({last})")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.scheduler_port = free_port()
        self.agent_port = free_port()
        self.editor_port = free_port()
        self.large_bytes = round(args.download_mib * MIB)
        config = workdir / "scheduler.toml"
        config.write_text(
            scheduler_toml(workdir, self.scheduler_port, self.editor_port, self.large_bytes)
        )
        self.scheduler = SchedulerProcess(
            REPO, config, self.scheduler_port, workdir / "scheduler.log", log_level="WARNING"
        )
        (workdir / "agent").mkdir()
        agent_config = workdir / "agent" / "agent.toml"
        agent_config.write_text(agent_toml(workdir, self.scheduler_port, self.agent_port))
        self.agent = AgentProcess(agent_config, workdir / "agent.log")
        self.notebook = ""
        self.token = ""

    @property
    def scheduler_url(self) -> str:
        return f"http://127.0.0.1:{self.scheduler_port}"

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"

    def proxies_cpu_seconds(self) -> float:
        """CPU seconds the scheduler and the agent have used so far."""
        return cpu_seconds(self.scheduler.pid) + self.agent.cpu_seconds()

    def check_alive(self) -> None:
        self.scheduler.check_alive()
        self.agent.check_alive()

    def stop(self) -> None:
        self.agent.stop()
        self.scheduler.stop()

    def log_tails(self, lines: int = 20) -> str:
        parts = []
        for path in (self.workdir / "scheduler.log", self.workdir / "agent.log"):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            parts.append(f"--- last lines of {path}:\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------ setup

    async def setup(self) -> None:
        """Scheduler, agent, project, tokens, and a notebook the agent reports RUNNING."""
        self.scheduler.start()
        await self.scheduler.wait_healthy()
        config = self.scheduler.config
        admin = scheduler_command(config, "admin-token")
        secret = scheduler_command(config, "add-host", HOST)
        (self.workdir / "agent" / "secret").write_text(secret + "\n")
        self.agent.start()
        async with aiohttp.ClientSession(self.scheduler_url) as api:

            async def call(method: str, path: str, token: str, body: Any = None) -> Any:
                async with api.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {token}"}
                ) as reply:
                    if reply.status >= 300:
                        raise SetupFailed(f"{method} {path}: {reply.status} {await reply.text()}")
                    return await reply.json()

            async def host_ready() -> bool:
                hosts = (await call("GET", "/v1/admin/hosts", admin))["items"]
                return any(h["id"] == HOST and h["state"] == "ready" for h in hosts)

            await poll(f"host {HOST} registered", host_ready, 30, self.check_alive)
            await call("POST", "/v1/admin/projects", admin, {"name": PROJECT})
            body = {"project": PROJECT, "role": "operator", "description": "bench-access"}
            operator = (await call("POST", "/v1/admin/tokens", admin, body))["token"]
            body = {"project": PROJECT, "role": "read", "description": "bench-access editor"}
            self.token = (await call("POST", "/v1/admin/tokens", admin, body))["token"]
            create = {"framework": FRAMEWORK, "editor": EDITOR, "gpu": 0, "cpu": 1}
            self.notebook = (await call("POST", "/v1/notebooks", operator, create))["id"]

            async def running() -> bool:
                nb = await call("GET", f"/v1/notebooks/{self.notebook}", operator)
                if nb["state"] in ("FAILED", "ERROR", "STOPPED"):
                    raise SetupFailed(
                        f"notebook {self.notebook} {nb['state']}: {nb.get('state_reason', '')}"
                    )
                return nb["state"] == "RUNNING"

            await poll(f"notebook {self.notebook} RUNNING", running, 30, self.check_alive)
            # The stable URL is the agent's authenticated proxy: no token, no editor.
            async with api.get(self.base("stable") + "small") as reply:
                if reply.status != 401:
                    raise SetupFailed(f"the stable URL without a token answered {reply.status}")
        header = self.workdir / "authorization.header"
        header.write_text(f"Authorization: token {self.token}\n")
        header.chmod(0o600)

    def base(self, path: str) -> str:
        origin = self.scheduler_url if path == "stable" else self.agent_url
        return f"{origin}/notebooks/{self.notebook}/"

    # ------------------------------------------------------------ measuring

    async def measure(self) -> dict[str, dict[str, list[float | None]]]:
        args = self.args
        samples: dict[str, dict[str, list[float | None]]] = {p: {} for p in report.PATHS}

        def add(path: str, key: str, value: float | None) -> None:
            samples[path].setdefault(key, []).append(value)

        ws_large = round(args.ws_large_mib * MIB)
        for rep in range(args.repeats):
            order = report.PATHS if rep % 2 == 0 else report.PATHS[::-1]
            for path in order:
                async with measure.session(self.token) as http:
                    times = await measure.small_gets(http, self.base(path), args.requests)
                for key, value in report.latency_ms(times).items():
                    add(path, key, value)
            for path in order:
                cpu_before = self.proxies_cpu_seconds()
                if args.download_client == "curl":
                    header = self.workdir / "authorization.header"
                    seconds = await asyncio.to_thread(
                        measure.download_curl, self.base(path), self.large_bytes, header
                    )
                else:
                    async with measure.session(self.token) as http:
                        seconds = await measure.download_aiohttp(
                            http, self.base(path), self.large_bytes
                        )
                cpu = self.proxies_cpu_seconds() - cpu_before
                add(path, "download_mb_per_s", report.mb_per_s(self.large_bytes, seconds))
                add(path, "download_cpu_s_per_gb", cpu / (self.large_bytes / report.GB))
            for path in order:
                async with measure.session(self.token) as http:
                    seconds = await measure.websocket_echo(
                        http, self.base(path), args.ws_small_bytes, args.ws_small_messages
                    )
                add(path, "ws_small_round_trips_per_s", args.ws_small_messages / seconds)
            for path in order:
                async with measure.session(self.token) as http:
                    seconds = await measure.websocket_echo(
                        http, self.base(path), ws_large, args.ws_large_messages
                    )
                add(
                    path,
                    "ws_large_mb_per_s",
                    report.mb_per_s(ws_large * args.ws_large_messages, seconds),
                )
            self.check_alive()
            summary = report.summarize(
                {p: {k: v[-1:] for k, v in s.items()} for p, s in samples.items()}
            )
            log.info(
                "repetition %d/%d: stable/direct %s",
                rep + 1,
                args.repeats,
                ", ".join(
                    f"{key} {figure['ratio']:.2f}"
                    for key, figure in summary.items()
                    if figure["ratio"] is not None
                ),
            )
        return samples

    def settings(self) -> dict[str, Any]:
        args = self.args
        return {
            "repeats": args.repeats,
            "requests": args.requests,
            "download_mib": args.download_mib,
            "download_client": args.download_client,
            "ws_small_bytes": args.ws_small_bytes,
            "ws_small_messages": args.ws_small_messages,
            "ws_large_mib": args.ws_large_mib,
            "ws_large_messages": args.ws_large_messages,
        }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench-access",
        description="What a notebook's stable URL (through the scheduler) costs over the "
        "agent direct: latency, download and WebSocket throughput.",
    )
    parser.add_argument("--repeats", type=int, default=7, help="repetitions (default 7)")
    parser.add_argument("--requests", type=int, default=500, help="small GETs per repetition")
    parser.add_argument("--download-mib", type=float, default=256, help="download size")
    parser.add_argument(
        "--download-client",
        choices=("curl", "aiohttp"),
        default="curl" if shutil.which("curl") else "aiohttp",
        help="what downloads (default curl when on PATH)",
    )
    parser.add_argument("--ws-small-bytes", type=int, default=1024)
    parser.add_argument("--ws-small-messages", type=int, default=1000)
    parser.add_argument("--ws-large-mib", type=float, default=1)
    parser.add_argument("--ws-large-messages", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    counts = (args.repeats, args.requests, args.ws_small_bytes, args.ws_small_messages)
    if min(*counts, args.ws_large_messages) < 1 or min(args.download_mib, args.ws_large_mib) <= 0:
        raise SystemExit("bench-access: counts and sizes must be positive")
    if args.download_client == "curl" and not shutil.which("curl"):
        raise SystemExit("bench-access: curl is not on PATH; use --download-client aiohttp")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("bench-access: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    workdir = Path(tempfile.mkdtemp(prefix="nbfleet-bench-access-"))
    bench = Bench(args, workdir)
    started = time.monotonic()
    failed = True
    try:
        asyncio.run(bench.setup())
        log.info("notebook %s RUNNING; measuring %d repetitions", bench.notebook, args.repeats)
        samples = asyncio.run(bench.measure())
        failed = False
    except (SetupFailed, SchedulerDied, measure.BrokenPath, aiohttp.ClientError, OSError) as exc:
        print(f"bench-access: {exc}\n{bench.log_tails()}", file=sys.stderr)
        return 2
    finally:
        bench.stop()
        if args.keep or failed:
            log.info("temporary directory kept: %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    settings = bench.settings()
    context = {
        "cpus": os.cpu_count(),
        "commit": checkout_commit(REPO),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(report.to_json(samples, settings, context))
        return 0
    print(
        f"{args.repeats} repetitions, medians; direct: agent's proxy → editor; stable URL: "
        f"scheduler → agent's proxy → editor; {context['cpus']} CPUs shared by all four processes"
    )
    print()
    print(report.format_table(report.summarize(samples), settings))
    return 0
