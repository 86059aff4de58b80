"""The load generator's HTTP client for scripts/bench-scheduler: HTTP/1.1 keep-alive on loopback.

On a 2-core machine the load generator and the scheduler share the CPU, so every microsecond the
client spends is one the scheduler does not get. aiohttp's client costs a few times more per
request than this: one connection, one request at a time, the request written as one buffer,
the reply read by ``Content-Length`` (or chunked). No TLS, redirects, proxies or cookies: it
only ever talks to the schedulers the bench started on 127.0.0.1 (or a database's replicas:
:class:`RoundRobin` sends each request to the next one, as a load balancer in front of them
would).

Agent requests are signed per request with :func:`common.auth.sign` (a fresh nonce each time;
the scheduler refuses a replayed one).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from common.auth import sign

JSON = "application/json"


class HttpError(Exception):
    """The connection failed or the reply was not HTTP the client understands."""


class Connection:
    """One keep-alive connection to ``host:port``; opened on first use, reopened after the
    server closes it. Not safe for concurrent requests: one coroutine owns it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._host_header = f"Host: {host}:{port}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """``(status, body)`` of one request. A GET on a kept-alive connection the server has
        closed meanwhile (its keep-alive timeout) is sent again once on a new connection."""
        reused = self._writer is not None
        try:
            return await self._request(method, path, body, headers)
        except HttpError:
            if not (reused and method == "GET"):
                raise
        return await self._request(method, path, body, headers)

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> tuple[int, bytes]:
        if self._writer is None:
            await self.open()
        assert self._reader is not None and self._writer is not None
        lines = [f"{method} {path} HTTP/1.1\r\n", self._host_header]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\n")
        if headers:
            lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        lines.append("\r\n")
        self._writer.write("".join(lines).encode() + body)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
            status, length, chunked, close = _parse_head(head)
            if chunked:
                payload = await self._read_chunked()
            else:
                payload = await self._reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            self.close()
            raise HttpError(f"{method} {path}: connection failed mid-reply: {exc!r}") from exc
        if close:
            self.close()
        return status, payload

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)


class RoundRobin:
    """Requests spread over several scheduler replicas: one keep-alive :class:`Connection` to
    each, used in turn, so consecutive requests of one client go to consecutive replicas (a
    load balancer that balances requests, not connections). ``first`` is the index of the
    replica the first request goes to: clients started at different ones keep every replica
    equally busy at every moment. Like a Connection, owned by one coroutine."""

    def __init__(self, host: str, ports: list[int], first: int = 0) -> None:
        self.connections = [Connection(host, port) for port in ports]
        self._next = first % len(self.connections)

    async def open(self) -> None:
        await asyncio.gather(*(c.open() for c in self.connections))

    def close(self) -> None:
        for connection in self.connections:
            connection.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        connection = self.connections[self._next]
        self._next = (self._next + 1) % len(self.connections)
        return await connection.request(method, path, body, headers)


#: What user and operator traffic is sent through: one scheduler, or several in turn.
Client = Connection | RoundRobin


def client_for(ports: list[int], first: int = 0) -> Client:
    """A plain :class:`Connection` for one scheduler (nothing in between), else a
    :class:`RoundRobin` over every port starting at ``ports[first % len(ports)]``."""
    if len(ports) == 1:
        return Connection("127.0.0.1", ports[0])
    return RoundRobin("127.0.0.1", ports, first)


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """``(status, content length, chunked, server closes)`` from a reply's header block."""
    if not head.startswith(b"HTTP/1."):
        raise HttpError(f"not an HTTP reply: {head[:60]!r}")
    status = int(head[9:12])
    lower = head.lower()
    length = 0
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17 : end])
    chunked = b"\r\ntransfer-encoding: chunked" in lower
    close = b"\r\nconnection: close" in lower
    return status, length, chunked, close


class Api:
    """JSON calls with a bearer token (setup, user and operator traffic)."""

    def __init__(self, connection: Client, token: str = "") -> None:
        self.connection = connection
        self.token = token

    async def call(
        self, method: str, path: str, payload: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        """``(status, decoded JSON or None)``."""
        body = b"" if payload is None else json.dumps(payload).encode()
        bearer = self.token if token is None else token
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        status, reply = await self.connection.request(method, path, body, headers)
        try:
            return status, json.loads(reply) if reply else None
        except ValueError:
            return status, None


async def signed_call(
    connection: Connection, secret: bytes, host_id: str, method: str, path: str, body: bytes
) -> tuple[int, bytes]:
    """One agent request, signed like ``agent.client`` signs it."""
    return await connection.request(method, path, body, sign(secret, host_id, method, path, body))
