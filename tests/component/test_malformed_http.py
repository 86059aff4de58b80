"""Malformed HTTP sent to the scheduler's and the agent's servers: each answered 400 (or the
connection closed), and a burst logged as one WARNING line without a traceback, never an
ERROR per request. Both servers run on real loopback ports and get raw bytes over a socket."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from agent.app import Agent
from tests.component.conftest import Harness

#: One malformed request each: bad request lines, a header with a NUL, a header without a
#: colon, a NUL in the path, TLS spoken to the HTTP port.
GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nBad\x00Name: v\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Value: a\x00b\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
]


async def send_raw(port: int, data: bytes) -> bytes:
    """What the server answers to ``data`` before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


async def send_burst(port: int) -> None:
    for data in GARBAGE:
        answer = await send_raw(port, data)
        # read() returned: the server closed the connection, after a 400 or without a word.
        assert answer == b"" or answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), (
            data,
            answer[:80],
        )
    # Whatever is logged is logged by the time the answers arrived; give stragglers a turn.
    await asyncio.sleep(0.05)


def assert_one_warning(caplog: pytest.LogCaptureFixture, subject: str) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    from_aiohttp = [
        r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.WARNING
    ]
    assert from_aiohttp == [], [r.getMessage() for r in from_aiohttp]
    warnings = [r for r in caplog.records if r.name == "common.http_server"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    [warning] = warnings
    assert warning.levelno == logging.WARNING
    assert warning.exc_info is None and warning.exc_text is None and warning.stack_info is None
    message = warning.getMessage()
    assert "\n" not in message
    assert message.startswith(f"{subject} peer=127.0.0.1 sent a malformed HTTP request (")
    assert "answered 400 and closed the connection" in message


async def test_scheduler_logs_a_burst_of_malformed_requests_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert harness.client is not None
    port = harness.client.server.port
    assert port is not None
    await send_burst(port)
    assert_one_warning(caplog, "scheduler")
    # The server is unharmed.
    health = await harness.call("GET", "/health")
    assert health.status == 200


async def test_agent_logs_a_burst_of_malformed_requests_once(
    agent_server: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = int(agent_server.agent_url.rsplit(":", 1)[1])
    await send_burst(port)
    assert_one_warning(caplog, "host=h1 agent")
    url = agent_server.agent_url + "/health"
    async with aiohttp.ClientSession() as http, http.get(url) as health:
        assert health.status == 200
