"""The scheduler processes scripts/bench-scheduler measures: their temporary config, start, stop.

A scheduler is this checkout's ``python -m scheduler.main run`` on 127.0.0.1 and a free port,
with its admin token, agent secrets and keys (and the SQLite database) in the bench's temporary
directory and its stderr in ``scheduler.log`` there. Project quota defaults in the config are
raised far above what the bench submits, so quotas never decide a placement figure.

Several replicas on one PostgreSQL database (:class:`SchedulerReplicas`) share that one config
file, which names every file they must share (admin token, secrets key, SSH host key); each is
told its own ``listen`` through ``NBFLEET_SCHEDULER_LISTEN`` and logs to ``scheduler-<n>.log``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.scheduler_http import Api, Connection, HttpError

FRAMEWORK = "bench"
EDITOR = "bench-editor"

#: Large enough for any bench run, within the API's QuotaUpdate limits.
QUOTA = {"gpus": 100_000, "cpus": 1_000_000, "notebooks": 100_000}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(workdir: Path, port: int, database_url: str = "") -> Path:
    """A scheduler TOML with a one-framework catalog; returns its path. Without
    ``database_url`` the database is ``scheduler.db`` in ``workdir``."""
    config = workdir / "scheduler.toml"
    database = (
        f"database_url = {json.dumps(database_url)}"
        if database_url
        else f'database = "{workdir / "scheduler.db"}"'
    )
    # The two key files are where the scheduler puts them by default (beside the admin
    # token), named so that every replica reads the same ones.
    config.write_text(
        f"""\
listen = "127.0.0.1:{port}"
{database}
admin_token_file = "{workdir / "admin.token"}"
agent_secrets_dir = "{workdir / "agents"}"
secrets_key_file = "{workdir / "agent_secrets.key"}"
ssh_host_key_file = "{workdir / "ssh_host_ed25519_key"}"

[quota]
gpus = {QUOTA["gpus"]}
cpus = {QUOTA["cpus"]}
notebooks = {QUOTA["notebooks"]}

[catalog.frameworks.{FRAMEWORK}]
image = "nbfleet/bench:latest"
editors = ["{EDITOR}"]

[catalog.editors.{EDITOR}]
port = 8080
command = ["busybox", "httpd", "-f", "-p", "{{port}}"]
url_path = "/?token={{token}}"
"""
    )
    return config


def checkout_commit(repo: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def raise_fd_limit() -> None:
    """Thousands of sockets on each side: take the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def terminate(proc: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` is still there after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SchedulerDied(Exception):
    """The scheduler process exited while the bench needed it; the message has its log tail."""


class SchedulerProcess:
    """``python -m scheduler.main run`` from ``repo``, optionally under cProfile."""

    def __init__(
        self,
        repo: Path,
        config: Path,
        port: int,
        log_path: Path,
        *,
        log_level: str = "INFO",
        profile_to: Path | None = None,
        sql_stats_dir: Path | None = None,
    ) -> None:
        self.repo = repo
        self.config = config
        self.port = port
        self.log_path = log_path
        self.log_level = log_level
        self.profile_to = profile_to
        self.sql_stats_dir = sql_stats_dir
        self._sql_dumps = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        profiler = [] if self.profile_to is None else ["-m", "cProfile", "-o", str(self.profile_to)]
        entry = ["-m", "scheduler.main"]
        if self.sql_stats_dir is not None:
            entry = ["-m", "bench.scheduler_sqltrace", str(self.sql_stats_dir)]
        argv = [sys.executable, *profiler, *entry, "run"]
        argv += ["--config", str(self.config), "--log-level", self.log_level]
        env = {
            **os.environ,
            "PYTHONPATH": f"{self.repo}{os.pathsep}{self.repo / 'scripts'}",
            # Replicas share one config file; each listens on its own port.
            "NBFLEET_SCHEDULER_LISTEN": f"127.0.0.1:{self.port}",
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.repo, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self, grace_s: float = 0.0) -> None:
        """Raise :class:`SchedulerDied` with the log tail if the process has exited (or exits
        within ``grace_s``: a connection error may arrive before the exit status)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            return
        raise SchedulerDied(
            f"the scheduler exited with code {self.proc.returncode}; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    async def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        api = Api(Connection("127.0.0.1", self.port))
        last = "no answer yet"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, _ = await api.call("GET", "/health")
                if status == 200:
                    api.connection.close()
                    return
                last = f"HTTP {status}"
            except HttpError as exc:
                last = str(exc)
            await asyncio.sleep(0.1)
        raise SchedulerDied(
            f"the scheduler did not answer GET /health within {timeout_s:.0f}s ({last}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time the scheduler has used so far (Linux /proc), 0 if unknown."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        # Fields 14 and 15 of stat(5) (utime, stime), counted after the ")" of the name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def sql_stats(self, timeout_s: float = 10.0) -> dict[str, list[float]]:
        """With ``sql_stats_dir``: the statements timed since the previous call,
        ``{sql: [executions, seconds]}`` (see bench/scheduler_sqltrace.py); else empty."""
        if self.sql_stats_dir is None:
            return {}
        target = self.sql_stats_dir / f"{self._sql_dumps}.json"
        self._sql_dumps += 1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while not target.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise SchedulerDied(f"the scheduler wrote no SQL statistics to {target}")
            await asyncio.sleep(0.02)
        return json.loads(target.read_text())

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (the scheduler shuts down cleanly and cProfile writes its file), then
        SIGKILL if it is still there after ``timeout_s``."""
        terminate(self.proc, timeout_s)


#: A scheduler log line at ERROR or worse (scheduler/main.py's format: date, time, level).
_ERROR_LINE = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) (?P<what>.*)$")


class SchedulerReplicas:
    """``count`` schedulers on one config file (so one database), each on a port of its own:
    ``ports[n]`` logs to ``scheduler-<n+1>.log`` (one replica: ``scheduler.log``). The
    profiling options apply to a single replica only (the bench refuses them otherwise)."""

    def __init__(
        self,
        repo: Path,
        workdir: Path,
        count: int,
        *,
        log_level: str = "INFO",
        profile_to: Path | None = None,
        sql_stats_dir: Path | None = None,
    ) -> None:
        self.repo = repo
        self.config = workdir / "scheduler.toml"
        self.ports: list[int] = []
        while len(self.ports) < count:
            port = free_port()
            if port not in self.ports:
                self.ports.append(port)
        logs = ["scheduler.log"] if count == 1 else [f"scheduler-{n + 1}.log" for n in range(count)]
        self.processes = [
            SchedulerProcess(
                repo,
                self.config,
                port,
                workdir / name,
                log_level=log_level,
                profile_to=profile_to,
                sql_stats_dir=sql_stats_dir,
            )
            for port, name in zip(self.ports, logs, strict=True)
        ]

    def write_config(self, database_url: str = "") -> None:
        write_config(self.config.parent, self.ports[0], database_url)

    def migrate(self) -> str:
        """``nbfleet-scheduler migrate`` once, for all replicas (PostgreSQL: ``run`` refuses an
        unmigrated database); returns what it printed. Raises SystemExit when it fails."""
        done = subprocess.run(
            [sys.executable, "-m", "scheduler.main", "migrate", "--config", str(self.config)],
            cwd=self.repo,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(self.repo)},
        )
        if done.returncode != 0:
            raise SystemExit(
                f"bench-scheduler: scheduler migrate failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout.strip()

    async def start(self) -> None:
        """The first replica alone until it answers (it creates the shared key files and
        imports the agent secret files into the database: two at once would race for
        both), then the others together."""
        first, *others = self.processes
        first.start()
        await first.wait_healthy()
        for process in others:
            process.start()
        await asyncio.gather(*(process.wait_healthy() for process in others))

    def check_alive(self, grace_s: float = 0.0) -> None:
        """:meth:`SchedulerProcess.check_alive` for every replica, ``grace_s`` in all."""
        deadline = time.monotonic() + grace_s
        while True:
            for process in self.processes:
                process.check_alive()
            if time.monotonic() >= deadline:
                return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def cpu_seconds(self) -> float:
        return sum(process.cpu_seconds() for process in self.processes)

    def log_tail(self, lines: int = 40) -> str:
        if len(self.processes) == 1:
            return self.processes[0].log_tail(lines)
        return "\n".join(
            f"---- last lines of {process.log_path} ----\n{process.log_tail(lines)}"
            for process in self.processes
        )

    def log_errors(self) -> dict[str, dict[str, int]]:
        """Per log file name with any, its ERROR and CRITICAL lines without their time stamp
        (identical ones counted together)."""
        found: dict[str, dict[str, int]] = {}
        for process in self.processes:
            try:
                text = process.log_path.read_text(errors="replace")
            except OSError:
                continue
            lines: dict[str, int] = {}
            for line in text.splitlines():
                match = _ERROR_LINE.match(line)
                if match:
                    lines[match["what"]] = lines.get(match["what"], 0) + 1
            if lines:
                found[process.log_path.name] = lines
        return found

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
