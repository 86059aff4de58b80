"""Who may use the editor proxy, and what it carried (see :mod:`agent.proxy`).

:class:`Authorizer` asks the scheduler (``POST /v1/agents/authorize``) whether a token may open a
notebook's editor and caches the answer per (notebook, sha256(token)): allowed for
:data:`ALLOWED_TTL_S`, refused for :data:`REFUSED_TTL_S`, so a deleted token stops working within
seconds. Concurrent checks of one token share one call; a failed call is not cached.

:class:`ActivityMeter` keeps, per notebook, the last proxied request or frame and the bytes
both ways, and hands the notebooks with new traffic to the heartbeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.wire import AuthorizeReply, AuthorizeRequest, NotebookActivity

ALLOWED_TTL_S = 10.0
REFUSED_TTL_S = 2.0
#: Cached answers kept before expired ones are swept.
CACHE_SWEEP_AT = 4096

Ask = Callable[[AuthorizeRequest], Awaitable[AuthorizeReply]]


class Authorizer:
    """Asks the scheduler whether a token may open a notebook, with a short cache.

    ``check`` returns the scheduler's :class:`AuthorizeReply`; a scheduler that cannot answer
    raises :class:`SchedulerUnavailable` (or the :class:`ApiError` it answered), and nothing is
    cached then.
    """

    def __init__(
        self,
        ask: Ask,
        *,
        clock: Callable[[], float] = time.monotonic,
        allowed_ttl_s: float = ALLOWED_TTL_S,
        refused_ttl_s: float = REFUSED_TTL_S,
    ) -> None:
        self._ask = ask
        self._clock = clock
        self._allowed_ttl_s = allowed_ttl_s
        self._refused_ttl_s = refused_ttl_s
        self._cache: dict[tuple[str, str], tuple[float, AuthorizeReply]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[AuthorizeReply]] = {}
        #: Calls made to the scheduler (tests, and a hint in debug logs).
        self.asked = 0

    async def check(self, notebook: str, token: str) -> AuthorizeReply:
        key = (notebook, hashlib.sha256(token.encode()).hexdigest())
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[AuthorizeReply] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            self.asked += 1
            reply = await self._ask(AuthorizeRequest(notebook=notebook, token=token))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            ttl = self._allowed_ttl_s if reply.allowed else self._refused_ttl_s
            if len(self._cache) >= CACHE_SWEEP_AT:
                self._sweep()
            self._cache[key] = (self._clock() + ttl, reply)
            future.set_result(reply)
            return reply
        finally:
            del self._inflight[key]

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]


# ---------------------------------------------------------------- activity


@dataclass
class _Traffic:
    last_at: float
    bytes_in: int = 0
    bytes_out: int = 0
    #: Traffic since the last acknowledged heartbeat.
    dirty: bool = True


class ActivityMeter:
    """Per notebook: when the proxy last carried something for it, and how many bytes
    (cumulative since this agent started proxying it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._traffic: dict[str, _Traffic] = {}

    def record(self, notebook: str, *, bytes_in: int = 0, bytes_out: int = 0) -> None:
        now = self._clock()
        traffic = self._traffic.get(notebook)
        if traffic is None:
            traffic = self._traffic[notebook] = _Traffic(last_at=now)
        traffic.last_at = now
        traffic.bytes_in += bytes_in
        traffic.bytes_out += bytes_out
        traffic.dirty = True

    def get(self, notebook: str) -> NotebookActivity | None:
        traffic = self._traffic.get(notebook)
        return None if traffic is None else _activity(notebook, traffic)

    def pending(self) -> list[NotebookActivity]:
        """Notebooks with traffic since the last :meth:`acknowledge`, as they are now."""
        return [_activity(n, t) for n, t in sorted(self._traffic.items()) if t.dirty]

    def acknowledge(self, sent: list[NotebookActivity]) -> None:
        """``sent`` reached the scheduler: those notebooks are clean unless traffic arrived
        after the snapshot was taken."""
        for item in sent:
            traffic = self._traffic.get(item.notebook)
            if traffic is not None and _activity(item.notebook, traffic) == item:
                traffic.dirty = False

    def prune(self, keep: set[str]) -> None:
        """Forget reported notebooks no longer on this host."""
        for notebook in [n for n, t in self._traffic.items() if n not in keep and not t.dirty]:
            del self._traffic[notebook]


def _activity(notebook: str, traffic: _Traffic) -> NotebookActivity:
    return NotebookActivity(
        notebook=notebook,
        last_activity_at=traffic.last_at,
        bytes_in=traffic.bytes_in,
        bytes_out=traffic.bytes_out,
    )
