"""The client side of scripts/bench-access: each figure, measured on one editor URL.

``base`` is the editor's URL, ``http://HOST:PORT/notebooks/{id}/``, at the scheduler (the
stable URL) or at the agent (direct); the same code and the same client measure both. Every
request carries the project token as ``Authorization: token T``, as Jupyter clients send it.
Answers are checked (status, size, the echo equal to what was sent): a figure of a broken path
is an error, never a number.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import aiohttp

from bench.access_editor import SMALL_BODY

#: Untimed requests before the timed ones (connections opened, the token's check cached).
WARMUP = 10
MAX_MESSAGE = 256 * 1024 * 1024


class BrokenPath(Exception):
    """An answer was not what the editor sends: the path is broken, nothing to measure."""


def session(token: str) -> aiohttp.ClientSession:
    """One keep-alive connection, as a browser tab or a Jupyter client holds."""
    return aiohttp.ClientSession(
        headers={"Authorization": f"token {token}"},
        connector=aiohttp.TCPConnector(limit=1),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
    )


async def small_gets(http: aiohttp.ClientSession, base: str, count: int) -> list[float]:
    """Seconds each of ``count`` sequential ``GET small`` took, from sending to the last byte."""
    url = base + "small"
    times = []
    for n in range(WARMUP + count):
        started = time.perf_counter()
        async with http.get(url, allow_redirects=False) as response:
            body = await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or body != SMALL_BODY:
            raise BrokenPath(f"GET {url}: HTTP {response.status}, {len(body)} bytes")
        if n >= WARMUP:
            times.append(elapsed)
    return times


async def download_aiohttp(http: aiohttp.ClientSession, base: str, size: int) -> float:
    """Seconds to download ``large`` (``size`` bytes), from sending to the last byte."""
    url = base + "large"
    received = 0
    started = time.perf_counter()
    async with http.get(url, allow_redirects=False) as response:
        async for chunk in response.content.iter_any():
            received += len(chunk)
    elapsed = time.perf_counter() - started
    if response.status != 200 or received != size:
        raise BrokenPath(f"GET {url}: HTTP {response.status}, {received} of {size} bytes")
    return elapsed


def download_curl(base: str, size: int, header_file: Path) -> float:
    """The same with curl into /dev/null (``header_file`` holds the Authorization header, so
    the token is not on a command line); curl's own total time."""
    url = base + "large"
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--output", os.devnull, "--header"]
        + [f"@{header_file}", "--write-out", "%{http_code} %{size_download} %{time_total}", url],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        status, received, seconds = done.stdout.split()
    except ValueError:
        raise BrokenPath(f"curl {url}: {done.stderr.strip() or done.stdout!r}")
    if done.returncode != 0 or status != "200" or int(received) != size:
        raise BrokenPath(f"curl {url}: HTTP {status}, {received} of {size} bytes {done.stderr}")
    return float(seconds)


async def websocket_echo(http: aiohttp.ClientSession, base: str, size: int, count: int) -> float:
    """Seconds for ``count`` round trips of a ``size``-byte binary message on ``ws``, one at a
    time (sent, echoed, received), after the handshake and one untimed round trip."""
    url = base.replace("http://", "ws://", 1) + "ws"
    message = os.urandom(size)
    async with http.ws_connect(url, max_msg_size=MAX_MESSAGE, compress=0, autoping=True) as ws:
        for n in range(count + 1):
            if n == 1:
                started = time.perf_counter()
            await ws.send_bytes(message)
            reply = await ws.receive()
            if reply.type != aiohttp.WSMsgType.BINARY or reply.data != message:
                raise BrokenPath(f"WebSocket {url}: {reply.type.name} instead of the echo")
        elapsed = time.perf_counter() - started
        await ws.close()
    return elapsed
