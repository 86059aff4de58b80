"""What the process-level tests (integration, e2e, browser) do with nbfleet's own commands and
the processes they start, written once.

``stop(proc, timeout_s=15)``
    SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; nothing for a process
    that already exited (or was never started: ``None``).

``nbfleet(urls, token, *args, timeout_s=60) -> CompletedProcess``
    The CLI (``python -m cli.main``) with ``NBFLEET_URL`` listing ``urls`` (one URL or
    several) and ``NBFLEET_TOKEN``, no config file; its output captured as text. The caller
    judges the exit status.

``scheduler_command(config, *args, run=subprocess.run) -> str``
    ``nbfleet-scheduler ARGS --config CONFIG`` (``python -m scheduler.main``); its stdout.
    Fails the test with the command's stderr when it exits non-zero. ``run`` runs it
    elsewhere (in a network namespace: ``Netns.run``), with ``subprocess.run``'s arguments.

``http_get(url, token="", headers=None, method="GET") -> (status, body)``
    One plain request (urllib, 10 s); an HTTP error status is an answer, not an exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def stop(proc: subprocess.Popen | None, timeout_s: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def nbfleet(
    urls: str | Sequence[str], token: str, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess:
    listed = urls if isinstance(urls, str) else ",".join(urls)
    env = dict(os.environ, NBFLEET_URL=listed, NBFLEET_TOKEN=token)
    env.pop("NBFLEET_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def scheduler_command(
    config: str | Path, *args: str, run: Callable[..., Any] = subprocess.run
) -> str:
    result = run(
        [sys.executable, "-m", "scheduler.main", *args, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"nbfleet-scheduler {' '.join(args)} exited {result.returncode}: {result.stderr}"
        )
    return result.stdout


def http_get(
    url: str, token: str = "", headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
