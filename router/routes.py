"""Where a notebook's stable URL leads, as a scheduler says, remembered for when none answers.

:meth:`Routes.locate` asks a scheduler (``GET /v1/router/notebooks/{id}`` with the router token,
failing over between the configured URLs by :mod:`common.failover`'s rules) and uses the answer
for ``lookup_ttl_s`` (1 s): a notebook that stopped, or started on another host, is followed
within that. Lookups of one notebook share one request.

**While no scheduler answers** (every URL refused, timed out, or a load balancer's 502/503/504),
a notebook whose host a scheduler confirmed within ``outage_grace_s`` (900 s) is still sent there:
open editors, kernels, saves and uploads keep working through a control-plane restart or outage.
The agent's proxy still checks every request's token, with its own grace for tokens it verified
(``authorize_grace_s``), so nothing is admitted here that the agent would refuse. Once the
outage is known, such a request does not wait for a scheduler: it is answered from memory and
the location is asked again in the background. A notebook this router has not served within
the window, or that was not running when last asked, gets 503 (:class:`Unavailable`). Logs:
once when the outage begins and when it ends, once per notebook served from memory.

What is remembered: at most :data:`MAX_KNOWN` notebooks, the least recently confirmed dropped
first. Nothing is written to disk: a router restarted during an outage knows no notebook until
a scheduler answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from common import wire
from common.failover import SchedulerUrls, proxy_failure, proxy_reason, tried_text

log = logging.getLogger(__name__)

MAX_KNOWN = 100_000

#: A lookup is small and on the request path: a scheduler that does not answer quickly is
#: treated as down (its successor, or memory, answers instead).
CONNECT_TIMEOUT_S = 2.0
LOOKUP_TIMEOUT_S = 5.0


class Unavailable(Exception):
    """No scheduler answers and this router cannot answer from memory; the message says why,
    for the person who sees the 503."""


class Refused(Unavailable):
    """A scheduler answered, but not with a location (the router token is wrong, or another
    error): a configuration problem an operator must see."""


@dataclass(frozen=True)
class Location:
    notebook: str
    #: The agent to forward to while the notebook runs; else None.
    agent_url: str | None
    #: The scheduler URL that answered last: it renders what a notebook not running shows.
    scheduler_url: str
    #: Served from memory while no scheduler answers.
    from_memory: bool = False


@dataclass
class _Known:
    agent_url: str | None
    confirmed_at: float
    checked_at: float


class Routes:
    def __init__(
        self,
        scheduler_urls: str | list[str],
        token: str,
        *,
        lookup_ttl_s: float = 1.0,
        outage_grace_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = SchedulerUrls(scheduler_urls, name="scheduler_url")
        self.token = token
        self.lookup_ttl_s = lookup_ttl_s
        self.outage_grace_s = outage_grace_s
        self.clock = clock
        self._known: dict[str, _Known] = {}
        self._asking: dict[str, asyncio.Task[_Known]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Since when no scheduler answers (clock time), else None.
        self._outage_since: float | None = None
        self._served_from_memory: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
            headers={"Authorization": f"Bearer {self.token}"},
        )

    async def close(self) -> None:
        for task in [*self._asking.values(), *self._background]:
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    async def locate(self, notebook_id: str) -> Location:
        now = self.clock()
        known = self._known.get(notebook_id)
        if known is not None and now - known.checked_at < self.lookup_ttl_s:
            if self.in_outage and self._within_grace(known, now):
                return self._from_memory(notebook_id, known)
            return self._location(notebook_id, known)
        if self.in_outage and self._within_grace(known, now):
            # Known outage: answer now, and ask again behind the request (once per TTL).
            assert known is not None
            known.checked_at = now
            task = asyncio.create_task(self._refresh(notebook_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return self._from_memory(notebook_id, known)
        try:
            known = await self._ask(notebook_id)
        except Refused:
            raise
        except Unavailable as exc:
            known = self._known.get(notebook_id)
            if self._within_grace(known, self.clock()):
                return self._from_memory(notebook_id, known)
            raise Unavailable(
                f"notebook {notebook_id}: no scheduler answers ({exc}), and this router has not "
                f"served it while running within the last {self.outage_grace_s:.0f}s; try again "
                "in a minute"
            ) from None
        return self._location(notebook_id, known)

    def _within_grace(self, known: _Known | None, now: float) -> bool:
        return (
            known is not None
            and known.agent_url is not None
            and now - known.confirmed_at <= self.outage_grace_s
        )

    def _location(self, notebook_id: str, known: _Known) -> Location:
        return Location(notebook_id, known.agent_url, self.urls.current)

    def _from_memory(self, notebook_id: str, known: _Known | None) -> Location:
        assert known is not None and known.agent_url is not None
        if notebook_id not in self._served_from_memory:
            self._served_from_memory.add(notebook_id)
            left = self.outage_grace_s - (self.clock() - known.confirmed_at)
            log.warning(
                "notebook=%s served at its last known host %s while no scheduler answers "
                "(for at most %.0fs more)",
                notebook_id,
                known.agent_url,
                left,
            )
        return Location(notebook_id, known.agent_url, self.urls.current, from_memory=True)

    async def _refresh(self, notebook_id: str) -> None:
        try:
            await self._ask(notebook_id)
        except Unavailable:
            pass  # logged once per outage by _ask

    async def _ask(self, notebook_id: str) -> _Known:
        """One lookup per notebook at a time; the others wait for its answer."""
        task = self._asking.get(notebook_id)
        if task is None:
            task = asyncio.create_task(self._lookup(notebook_id))
            self._asking[notebook_id] = task
            task.add_done_callback(lambda _t: self._asking.pop(notebook_id, None))
        return await asyncio.shield(task)

    async def _lookup(self, notebook_id: str) -> _Known:
        assert self._session is not None, "Routes.start() first"
        tried: list[tuple[str, str]] = []
        order = self.urls.in_order()
        for url in order:
            try:
                async with self._session.get(f"{url}/v1/router/notebooks/{notebook_id}") as reply:
                    body = await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                tried.append((url, type(exc).__name__))
                continue
            if proxy_failure(status, body) is not None:
                tried.append((url, proxy_reason(status)))
                continue
            if self.urls.answered(order[0], url):
                log.info("scheduler URL %s answers; asking it from now on", url)
            self._answered()
            if status != 200:
                error = wire.error_from_body(status, body)
                message = error.message if error is not None else f"HTTP {status}"
                log.error(
                    "notebook=%s the scheduler at %s refused the router's lookup: %s",
                    notebook_id,
                    url,
                    message,
                )
                raise Refused(f"the scheduler refused this router's lookup: {message}")
            route = wire.decode(body, wire.Route)
            return self._remember(notebook_id, route.agent_url)
        self._unanswered(tried)
        raise Unavailable(tried_text(tried))

    def _remember(self, notebook_id: str, agent_url: str | None) -> _Known:
        now = self.clock()
        self._known.pop(notebook_id, None)  # re-inserted last: the dict is oldest-first
        known = self._known[notebook_id] = _Known(agent_url, now, now)
        while len(self._known) > MAX_KNOWN:
            del self._known[next(iter(self._known))]
        self._served_from_memory.discard(notebook_id)
        return known

    def _answered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "a scheduler answers again after %.0fs; locations are asked again",
                self.clock() - self._outage_since,
            )
            self._outage_since = None
            self._served_from_memory.clear()

    def _unanswered(self, tried: list[tuple[str, str]]) -> None:
        if self._outage_since is None:
            self._outage_since = self.clock()
            log.warning(
                "no scheduler answers (%s); notebooks served while running in the last %.0fs "
                "keep being sent to their hosts",
                tried_text(tried),
                self.outage_grace_s,
            )
