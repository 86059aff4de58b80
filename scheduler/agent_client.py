"""Calls from the scheduler to an agent, signed with that agent's secret.

* ``GET {agent_url}/v1/notebooks/{id}/logs?tail=N``: the container's output, as text;
* ``GET ...logs?follow=1[&tail=N]``: the same, then new output as it comes, until the agent
  ends the response (the container stopped) or the scheduler closes it (the user left);
* ``POST {agent_url}/v1/notebooks/{id}/exec`` (``ExecRequest`` → ``ExecResult``): run a
  command in the notebook's container;
* ``POST {agent_url}/v1/notebooks/{id}/datasync`` (``DatasyncStart`` → newline-delimited
  ``DatasyncEvent`` JSON): sync its volumes now, streaming progress and the result.

An agent that cannot be reached, or answers what the scheduler cannot use, is
``ApiError('upstream_unavailable')`` (502) naming the host; an error the agent states about the
notebook (409 not running there, 404 no container, 400) is passed on with the agent's message.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import msgspec

from common import wire
from common.auth import sign
from common.errors import ApiError

log = logging.getLogger(__name__)

#: Agent errors about the notebook itself, passed on to the user as they are.
_PASSED_ON = frozenset({"invalid_request", "not_found", "conflict"})
#: Time an exec may take at the agent beyond its own timeout (container exec setup, output).
EXEC_GRACE_S = 15.0
#: Connecting to an agent for a stream; once connected a stream may stay quiet for ever.
STREAM_CONNECT_S = 10.0
#: A datasync stream repeats its progress every 10 s (``agent.datasync.KEEPALIVE_S``): this
#: long without a byte, the agent is taken for gone.
DATASYNC_QUIET_S = 60.0


def notebook_path(notebook_id: str, action: str) -> str:
    return f"/v1/notebooks/{urllib.parse.quote(notebook_id, safe='')}/{action}"


class AgentClient:
    """One HTTP session for all agents; :meth:`start` and :meth:`close` bracket its life."""

    def __init__(
        self,
        secret_for: Callable[[str], bytes | None],
        *,
        clock: Callable[[], float],
        timeout_s: float = 15.0,
    ) -> None:
        self._secret_for = secret_for
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def logs(self, host_id: str, agent_url: str, notebook_id: str, tail: int | None) -> str:
        """The container log text, or ``ApiError('upstream_unavailable')``."""
        path = notebook_path(notebook_id, "logs")
        if tail is not None:
            path += f"?tail={tail}"
        async with self._request(host_id, agent_url, "GET", path) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise _agent_error(host_id, "logs", resp.status, text, passed_on=frozenset())
            return text

    @asynccontextmanager
    async def follow_logs(
        self, host_id: str, agent_url: str, notebook_id: str, tail: int | None
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """The agent's streamed logs (``follow=1``): read chunks from what this yields until
        it is at EOF. Failing to start is an ``ApiError`` (nothing was sent yet)."""
        query = {"follow": "1"} if tail is None else {"follow": "1", "tail": str(tail)}
        path = f"{notebook_path(notebook_id, 'logs')}?{urllib.parse.urlencode(query)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=STREAM_CONNECT_S)
        async with self._request(host_id, agent_url, "GET", path, timeout=timeout) as resp:
            if resp.status != 200:
                text = await resp.text()
                raise _agent_error(host_id, "logs", resp.status, text, passed_on=frozenset())
            yield resp.content

    async def exec(
        self, host_id: str, agent_url: str, notebook_id: str, request: wire.ExecRequest
    ) -> wire.ExecResult:
        body = wire.encode(request)
        timeout = aiohttp.ClientTimeout(total=request.timeout_s + EXEC_GRACE_S)
        path = notebook_path(notebook_id, "exec")
        async with self._request(host_id, agent_url, "POST", path, body, timeout=timeout) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise _agent_error(host_id, "exec", resp.status, data.decode(errors="replace"))
        try:
            return msgspec.json.decode(data, type=wire.ExecResult)
        except msgspec.MsgspecError as exc:
            raise ApiError(
                "upstream_unavailable",
                f"agent on host {host_id} answered exec with an unreadable body: {exc}",
                host=host_id,
            )

    @asynccontextmanager
    async def datasync(
        self, host_id: str, agent_url: str, notebook_id: str, request: wire.DatasyncStart
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """The agent's datasync stream: read lines from what this yields until EOF. A refusal
        (409 not RUNNING there or one already running, 400) is an ``ApiError`` with the
        agent's message, raised before anything is yielded."""
        body = wire.encode(request)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=STREAM_CONNECT_S, sock_read=DATASYNC_QUIET_S
        )
        path = notebook_path(notebook_id, "datasync")
        async with self._request(host_id, agent_url, "POST", path, body, timeout=timeout) as resp:
            if resp.status != 200:
                raise _agent_error(host_id, "datasync", resp.status, await resp.text())
            yield resp.content

    @asynccontextmanager
    async def _request(
        self,
        host_id: str,
        agent_url: str,
        method: str,
        path_qs: str,
        body: bytes = b"",
        *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        secret = self._secret_for(host_id)
        if secret is None:
            raise ApiError(
                "upstream_unavailable", f"no secret for host {host_id}; cannot call its agent"
            )
        if self._session is None:
            raise RuntimeError("AgentClient is not started")
        headers = sign(secret, host_id, method, path_qs, body, now=self._clock())
        if body:
            headers["Content-Type"] = "application/json"
        url = agent_url.rstrip("/") + path_qs
        try:
            async with self._session.request(
                method, url, data=body or None, headers=headers, timeout=timeout or self._timeout
            ) as resp:
                yield resp
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("host=%s agent at %s unreachable: %r", host_id, agent_url, exc)
            raise ApiError(
                "upstream_unavailable",
                f"cannot reach the agent of host {host_id} at {agent_url}: {exc!r}",
                host=host_id,
            )


def _agent_error(
    host_id: str, what: str, status: int, text: str, *, passed_on: frozenset[str] = _PASSED_ON
) -> ApiError:
    err = wire.error_from_body(status, text)
    if err is not None and err.code in passed_on and err.status == status:
        return ApiError(err.code, err.message, host=host_id, **err.detail)
    return ApiError(
        "upstream_unavailable",
        f"agent on host {host_id} answered HTTP {status} for the {what}: {text[:200]}",
        host=host_id,
        status=status,
    )
