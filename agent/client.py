"""The agent's signed HTTP client for the scheduler's agent protocol (``/v1/agents/*``).

Every request is signed with :func:`common.auth.sign`. A connection problem (refused, reset,
timeout, 5xx) raises :class:`SchedulerUnavailable`: callers retry after :class:`Backoff`'s
jittered delay. A 4xx raises :class:`common.errors.ApiError` with the scheduler's code and
message: retrying the same request will not help.
"""

from __future__ import annotations

import logging
import random
from typing import Any, TypeVar

import aiohttp
import msgspec

from common import wire
from common.auth import sign
from common.errors import ApiError, code_for_status

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How long a browser request through the proxy waits for the scheduler's verdict on a token.
AUTHORIZE_S = 5.0


class SchedulerUnavailable(Exception):
    pass


class Backoff:
    """Full-jitter exponential backoff: delay n is uniform in [0, min(cap, base * 2**n)]."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.failures))
        self.failures += 1
        return max(0.05, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.failures = 0


class SchedulerClient:
    def __init__(
        self,
        base_url: str,
        host_id: str,
        secret: bytes,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self.host_id = host_id
        self._secret = secret
        self._session = session
        self._owns_session = session is None
        self._timeout_s = timeout_s

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(
        self,
        method: str,
        path_qs: str,
        reply_type: type[T],
        body: Any = None,
        *,
        timeout_s: float | None = None,
    ) -> T:
        data = b"" if body is None else wire.encode(body)
        headers = sign(self._secret, self.host_id, method, path_qs, data)
        if body is not None:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._timeout_s)
        try:
            async with self._http().request(
                method, self._base + path_qs, data=data or None, headers=headers, timeout=timeout
            ) as response:
                payload = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SchedulerUnavailable(f"{method} {path_qs}: {exc or type(exc).__name__}") from exc
        if status >= 500:
            raise SchedulerUnavailable(f"{method} {path_qs}: HTTP {status}: {payload[:200]!r}")
        if status >= 400:
            raise _api_error(status, payload)
        try:
            return wire.decoder(reply_type).decode(payload)
        except msgspec.DecodeError as exc:
            raise SchedulerUnavailable(f"{method} {path_qs}: unreadable reply: {exc}") from exc

    async def register(self, body: wire.AgentRegister) -> wire.RegisterReply:
        return await self._call("POST", "/v1/agents/register", wire.RegisterReply, body)

    async def heartbeat(self, body: wire.Heartbeat) -> wire.HeartbeatReply:
        return await self._call("POST", "/v1/agents/heartbeat", wire.HeartbeatReply, body)

    async def assignments(self, since: int | None, wait_s: float) -> wire.Assignments:
        """Long-poll: answers at once when the version differs from ``since``."""
        query = f"?wait={int(wait_s)}" if since is None else f"?since={since}&wait={int(wait_s)}"
        return await self._call(
            "GET",
            "/v1/agents/assignments" + query,
            wire.Assignments,
            timeout_s=wait_s + self._timeout_s,
        )

    async def transitions(self, body: wire.TransitionBatch) -> wire.TransitionReply:
        return await self._call("POST", "/v1/agents/transitions", wire.TransitionReply, body)

    async def usage(self, body: wire.UsageBatch) -> wire.Ack:
        return await self._call("POST", "/v1/agents/usage", wire.Ack, body)

    async def snapshot(self, body: wire.SnapshotReport) -> wire.Ack:
        return await self._call("POST", "/v1/agents/snapshots", wire.Ack, body)

    async def progress(self, body: wire.ProgressReport) -> wire.Ack:
        return await self._call("POST", "/v1/agents/progress", wire.Ack, body)

    async def authorize(self, body: wire.AuthorizeRequest) -> wire.AuthorizeReply:
        """May a token open a notebook's editor? A person waits on this: a short timeout."""
        return await self._call(
            "POST", "/v1/agents/authorize", wire.AuthorizeReply, body, timeout_s=AUTHORIZE_S
        )


def _api_error(status: int, payload: bytes) -> ApiError:
    return wire.error_from_body(status, payload) or ApiError(
        code_for_status(status), f"HTTP {status}: {payload[:200]!r}"
    )
