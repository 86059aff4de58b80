"""The agent's signed HTTP client for the scheduler's agent protocol (``/v1/agents/*``).

Every request is signed with :func:`common.auth.sign`, once per attempt: each attempt carries a
nonce of its own, so a replica that shares the replay cache of the one tried before never takes
the retry for a replay.

Several scheduler URLs (``scheduler_url``): a request goes to the one that answered last and,
when it gets no answer there (connection refused or broken, timeout, a 502/503/504 from a load
balancer), to the next at once, by the rules of :mod:`common.failover`. Every request of the
agent protocol may be applied twice (a register refreshes the host, a heartbeat carries latest
and cumulative figures, a repeated transition is answered ``repeat``, usage is cumulative and
kept as a maximum, a snapshot report is keyed by its id, authorize and assignments only read),
so even one that timed out after it was sent goes to the next URL. A switch is logged once,
when another URL answers; each attempt has the whole timeout (``timeout_s``) but connecting
only :data:`CONNECT_S`.

When no URL answers, or one answers 5xx, :class:`SchedulerUnavailable` is raised: callers
retry after :class:`Backoff`'s jittered delay. A 4xx raises :class:`common.errors.ApiError` with
the scheduler's code and message: retrying the same request will not help.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, TypeVar

import aiohttp
import msgspec

from common import wire
from common.auth import sign
from common.errors import ApiError, code_for_status
from common.failover import SchedulerUrls, proxy_failure, proxy_reason, tried_text

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How long a browser request through the proxy waits for the scheduler's verdict on a token
#: (per URL tried).
AUTHORIZE_S = 5.0
#: How long connecting to one URL may take before the next is tried: a replica's host that is
#: down drops the connection attempt, and waiting the whole request timeout for it could let
#: heartbeats miss the TTL; a scheduler that is up accepts well within this on any network.
CONNECT_S = 5.0


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
    """``scheduler_url``: the setting as configured (one URL, comma-separated URLs, or a list;
    a bad one raises ``ValueError``). ``timeout_s`` bounds each attempt."""

    def __init__(
        self,
        scheduler_url: str | Sequence[str],
        host_id: str,
        secret: bytes,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._urls = SchedulerUrls(scheduler_url, name="scheduler_url")
        self.host_id = host_id
        self._secret = secret
        self._session = session
        self._owns_session = session is None
        self._timeout_s = timeout_s

    @property
    def scheduler_url(self) -> str:
        """The URL requests go to first: the one that answered last."""
        return self._urls.current

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
        status, payload = await self._exchange(method, path_qs, data, body is not None, timeout_s)
        if status >= 500:
            raise SchedulerUnavailable(f"{method} {path_qs}: HTTP {status}: {payload[:200]!r}")
        if status >= 400:
            raise _api_error(status, payload)
        try:
            return wire.decoder(reply_type).decode(payload)
        except msgspec.DecodeError as exc:
            raise SchedulerUnavailable(f"{method} {path_qs}: unreadable reply: {exc}") from exc

    async def _exchange(
        self, method: str, path_qs: str, data: bytes, is_json: bool, timeout_s: float | None
    ) -> tuple[int, bytes]:
        """The status and body of the first URL that answers, trying each once from the
        current one; :class:`SchedulerUnavailable` naming every URL when none does."""
        total = timeout_s or self._timeout_s
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=min(CONNECT_S, total))
        order = self._urls.in_order()
        tried: list[tuple[str, str]] = []
        for url in order:
            headers = sign(self._secret, self.host_id, method, path_qs, data)
            if is_json:
                headers["Content-Type"] = "application/json"
            try:
                async with self._http().request(
                    method, url + path_qs, data=data or None, headers=headers, timeout=timeout
                ) as response:
                    payload = await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                tried.append((url, str(exc) or type(exc).__name__))
                continue
            if proxy_failure(status, payload) is not None:
                tried.append((url, proxy_reason(status)))
                continue
            if self._urls.answered(order[0], url):
                log.warning(
                    "host=%s switched to scheduler %s: no answer from %s; requests go there "
                    "until it stops answering",
                    self.host_id,
                    url,
                    tried_text(tried),
                )
            return status, payload
        raise SchedulerUnavailable(f"{method} {path_qs}: no answer from {tried_text(tried)}")

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
