"""Who may use the editor proxy, and what it carried (see :mod:`agent.proxy`).

:class:`Authorizer` asks the scheduler (``POST /v1/agents/authorize``) whether a token may open a
notebook's editor and caches the answer per (notebook, sha256(token)): allowed for
:data:`ALLOWED_TTL_S`, refused for :data:`REFUSED_TTL_S`, so a deleted token stops working within
seconds. Concurrent checks of one token share one call; a failed call is not cached.

:class:`Grace` is what keeps open editors working while no scheduler answers: a token the
scheduler allowed for a notebook is admitted for that notebook for ``authorize_grace_s`` after
the scheduler last confirmed it, but only while the scheduler cannot be reached or answers 5xx
(:class:`SchedulerUnavailable`). A refused token, a token never allowed here, and any answer of
the scheduler's own (a 4xx included) are never covered by it. It lives in memory only, bounded
to :data:`GRACE_ENTRIES` tokens: an agent restarted during an outage vouches for nobody.

:class:`ActivityMeter` keeps, per notebook, the latest activity (a proxied request or frame, SSH,
or what :mod:`agent.activity` measured) with what showed it, and the bytes the proxy carried
both ways, and hands the notebooks with news to the heartbeat.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.client import SchedulerUnavailable
from common.errors import ApiError
from common.wire import AuthorizeReply, AuthorizeRequest, NotebookActivity

log = logging.getLogger(__name__)

ALLOWED_TTL_S = 10.0
REFUSED_TTL_S = 2.0
#: Cached answers kept before expired ones are swept.
CACHE_SWEEP_AT = 4096
#: Tokens the grace remembers at most; past it, the one confirmed longest ago goes first. A
#: host serves tens of notebooks, each opened with a few tokens: this bounds memory, not use.
GRACE_ENTRIES = 10_000
#: In an outage, how long a request with a token the grace vouches for waits for the scheduler
#: before it is admitted on grace (the question goes on in the background).
OUTAGE_PATIENCE_S = 0.5

Ask = Callable[[AuthorizeRequest], Awaitable[AuthorizeReply]]
#: (notebook, sha256 of the token): what answers are cached and vouched for by.
Key = tuple[str, str]


class Authorizer:
    """Asks the scheduler whether a token may open a notebook, with a short cache and a grace.

    ``check`` returns the scheduler's :class:`AuthorizeReply`. A scheduler that cannot answer
    raises :class:`SchedulerUnavailable`, unless :class:`Grace` vouches for the token: then
    the scheduler's last reply for it is returned, cached like an allowed answer but never past
    the grace. A 4xx of the scheduler's raises its :class:`ApiError`. Neither failure is cached.
    ``grace_s`` 0 (the default) turns the grace off. ``clock`` is monotonic, so a step of the
    wall clock neither shortens nor stretches a window.

    Once an ask has found the scheduler unreachable, a token the grace vouches for waits at
    most ``patience_s`` for the next answer: a scheduler whose host is gone lets each attempt
    run into its timeout (per URL), and a person should not wait that out every cache period.
    The question goes on in the background and its answer, a refusal included, is cached for
    the next request. :meth:`close` abandons the questions still in flight.
    """

    def __init__(
        self,
        ask: Ask,
        *,
        clock: Callable[[], float] = time.monotonic,
        allowed_ttl_s: float = ALLOWED_TTL_S,
        refused_ttl_s: float = REFUSED_TTL_S,
        grace_s: float = 0.0,
        grace_entries: int = GRACE_ENTRIES,
        patience_s: float = OUTAGE_PATIENCE_S,
    ) -> None:
        self._ask = ask
        self._clock = clock
        self._allowed_ttl_s = allowed_ttl_s
        self._refused_ttl_s = refused_ttl_s
        self._patience_s = patience_s
        self.grace = Grace(grace_s, max_entries=grace_entries)
        self._cache: dict[Key, tuple[float, AuthorizeReply]] = {}
        #: One question per key at a time, shared by every check of that key.
        self._inflight: dict[Key, asyncio.Task[AuthorizeReply]] = {}
        #: Calls made to the scheduler (tests, and a hint in debug logs).
        self.asked = 0
        #: Per notebook, how many times its audience changed (:meth:`forget`): an answer to a
        #: question asked before the last change is returned to its caller, not remembered.
        self._epochs: dict[str, int] = {}

    async def check(self, notebook: str, token: str) -> AuthorizeReply:
        key = (notebook, hashlib.sha256(token.encode()).hexdigest())
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._cache[key]
        question = self._inflight.get(key) or self._start(key, notebook, token)
        patience = self._patience_s if self.grace.covers(key, self._clock()) else None
        try:
            return await asyncio.wait_for(asyncio.shield(question), patience)
        except SchedulerUnavailable as exc:
            failure = exc
        except TimeoutError:
            if patience is None:
                raise
            failure = SchedulerUnavailable(f"still unreachable: no answer within {patience:g} s")
        now = self._clock()
        vouched = self.grace.admit(key, now, str(failure))
        if vouched is None:
            raise failure
        reply, until = vouched
        self._remember(key, reply, min(now + self._allowed_ttl_s, until))
        return reply

    def forget(self, notebook: str) -> None:
        """Who may open ``notebook`` changed (its labels, which scope tokens): from the next
        request on, every token is asked about again, and the grace vouches for none of them
        until the scheduler allowed it again."""
        self._epochs[notebook] = self._epochs.get(notebook, 0) + 1
        for key in [k for k in self._cache if k[0] == notebook]:
            del self._cache[key]
        for key in [k for k in self._inflight if k[0] == notebook]:
            del self._inflight[key]
        self.grace.forget(notebook)

    async def close(self) -> None:
        """Abandon the questions still in flight (the agent is stopping)."""
        for question in list(self._inflight.values()):
            question.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def _start(self, key: Key, notebook: str, token: str) -> asyncio.Task[AuthorizeReply]:
        question = asyncio.create_task(
            self._ask_and_remember(key, notebook, token), name=f"authorize-{notebook}"
        )
        self._inflight[key] = question
        question.add_done_callback(functools.partial(self._finished, key))
        return question

    def _finished(self, key: Key, question: asyncio.Task[AuthorizeReply]) -> None:
        if self._inflight.get(key) is question:
            del self._inflight[key]
        if not question.cancelled():
            question.exception()  # retrieved: waiters re-raise it, nobody else must

    async def _ask_and_remember(self, key: Key, notebook: str, token: str) -> AuthorizeReply:
        self.asked += 1
        epoch = self._epochs.get(notebook, 0)
        try:
            reply = await self._ask(AuthorizeRequest(notebook=notebook, token=token))
        except SchedulerUnavailable:
            self.grace.unreachable()
            raise
        except ApiError:
            self.grace.answered(self._clock())
            raise
        now = self._clock()
        self.grace.answered(now)
        if self._epochs.get(notebook, 0) != epoch:
            return reply  # asked before the notebook's audience changed: not remembered
        self.grace.confirmed(key, reply, now)
        ttl = self._allowed_ttl_s if reply.allowed else self._refused_ttl_s
        self._remember(key, reply, now + ttl)
        return reply

    def _remember(self, key: Key, reply: AuthorizeReply, expires: float) -> None:
        if len(self._cache) >= CACHE_SWEEP_AT:
            self._sweep()
        self._cache[key] = (expires, reply)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]


# ---------------------------------------------------------------- grace


@dataclass
class _Vouched:
    #: When the scheduler last allowed the token (the Authorizer's clock), and its reply.
    confirmed_at: float
    reply: AuthorizeReply
    #: The outage in which this token was last admitted on grace (its start is logged once).
    relied_in: int = -1


class Grace:
    """Per (notebook, token digest): the scheduler's last allowing reply and when it came.

    :meth:`admit` vouches for a token until ``window_s`` after that, never longer; a refusal
    (:meth:`confirmed` with ``allowed=False``) forgets it at once. Logs, subject first: once
    per token when it is first admitted on grace in an outage (with until when), once per token
    whose grace ran out, and once per notebook when a scheduler answers again (:meth:`answered`).
    """

    def __init__(self, window_s: float, *, max_entries: int = GRACE_ENTRIES) -> None:
        self.window_s = window_s
        self._max_entries = max_entries
        #: In order of confirmation, oldest first: trimming pops from the front.
        self._vouched: OrderedDict[Key, _Vouched] = OrderedDict()
        #: Notebooks with a token admitted on grace since a scheduler last answered, and when
        #: the first was.
        self._relying: dict[str, float] = {}
        self._outage = 0
        #: The last question found the scheduler unreachable, and none was answered since.
        self._unreachable = False

    def __len__(self) -> int:
        return len(self._vouched)

    def confirmed(self, key: Key, reply: AuthorizeReply, now: float) -> None:
        """The scheduler answered for ``key``: vouch for an allowed token, forget a refused one."""
        self._vouched.pop(key, None)
        if reply.allowed and self.window_s > 0:
            self._vouched[key] = _Vouched(now, reply)
            self._trim(now)

    def forget(self, notebook: str) -> None:
        """Vouch for none of ``notebook``'s tokens until the scheduler allowed them again."""
        for key in [k for k in self._vouched if k[0] == notebook]:
            del self._vouched[key]

    def unreachable(self) -> None:
        """A question found no scheduler to answer it (unreachable, or 5xx)."""
        self._unreachable = True

    def covers(self, key: Key, now: float) -> bool:
        """Whether the scheduler is known to be unreachable and ``key`` within its grace."""
        vouched = self._vouched.get(key) if self._unreachable else None
        return vouched is not None and now < vouched.confirmed_at + self.window_s

    def answered(self, now: float) -> None:
        """A scheduler answered (a reply or a 4xx): the tokens admitted on grace are its to
        judge again; their cached answers run out within the cache time."""
        self._unreachable = False
        if not self._relying:
            return
        for notebook, since in sorted(self._relying.items()):
            log.info(
                "notebook=%s the scheduler answers again; its tokens, admitted on grace since "
                "%s, are checked by it again",
                notebook,
                _wall(since, now),
            )
        self._relying.clear()
        self._outage += 1

    def admit(self, key: Key, now: float, why: str) -> tuple[AuthorizeReply, float] | None:
        """While the scheduler cannot be asked: its last reply for ``key`` and until when it
        holds (clock time), or ``None`` when nothing vouches for the token."""
        vouched = self._vouched.get(key)
        if vouched is None:
            return None
        notebook, digest = key
        until = vouched.confirmed_at + self.window_s
        if now >= until:
            del self._vouched[key]
            log.warning(
                "notebook=%s token=sha256:%s the scheduler is still unreachable (%s) and the "
                "grace of this token ended at %s (%.0f s after the scheduler last allowed it); "
                "refusing it with 503 until the scheduler answers",
                notebook,
                digest[:12],
                why,
                _wall(until, now),
                self.window_s,
            )
            return None
        if vouched.relied_in != self._outage:
            vouched.relied_in = self._outage
            self._relying.setdefault(notebook, now)
            log.warning(
                "notebook=%s token=sha256:%s the scheduler cannot be reached (%s); admitting "
                "this token, which it allowed %.0f s ago, until %s at the latest "
                "(authorize_grace_s=%.0f); revocations apply once the scheduler answers again",
                notebook,
                digest[:12],
                why,
                now - vouched.confirmed_at,
                _wall(until, now),
                self.window_s,
            )
        return vouched.reply, until

    def _trim(self, now: float) -> None:
        while self._vouched:
            key, oldest = next(iter(self._vouched.items()))
            expired = oldest.confirmed_at + self.window_s <= now
            if not expired and len(self._vouched) <= self._max_entries:
                return
            del self._vouched[key]


def _wall(at: float, now: float) -> str:
    """``at`` on the Authorizer's (monotonic) clock, as a UTC wall-clock time for logs."""
    return datetime.fromtimestamp(time.time() + at - now, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- activity


@dataclass
class _Traffic:
    last_at: float
    #: What showed the activity at ``last_at`` (``NotebookActivity.signal``).
    signal: str
    bytes_in: int = 0
    bytes_out: int = 0
    #: Changed since the last acknowledged heartbeat.
    dirty: bool = True


class ActivityMeter:
    """Per notebook: the latest activity any signal showed (proxied traffic, SSH, the probes of
    :mod:`agent.activity`) and what showed it, and the bytes the proxy carried (cumulative since
    this agent started proxying it).

    The latest activity never goes back: a signal seen at or before the one held changes
    neither time nor signal. A notebook is sent with the next heartbeat only when something
    changed (a later activity, or bytes), so a probe that sees the same kernel activity every
    tick sends nothing new.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._traffic: dict[str, _Traffic] = {}

    def record(
        self,
        notebook: str,
        *,
        at: float | None = None,
        signal: str = "editor traffic",
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> None:
        """Activity of ``notebook`` at ``at`` (the clock's now when not given), shown by
        ``signal``, and bytes carried."""
        if at is None:
            at = self._clock()
        traffic = self._traffic.get(notebook)
        if traffic is None:
            traffic = self._traffic[notebook] = _Traffic(last_at=at, signal=signal)
        elif at > traffic.last_at:
            traffic.last_at, traffic.signal = at, signal
            traffic.dirty = True
        if bytes_in or bytes_out:
            traffic.bytes_in += bytes_in
            traffic.bytes_out += bytes_out
            traffic.dirty = True

    def get(self, notebook: str) -> NotebookActivity | None:
        traffic = self._traffic.get(notebook)
        return None if traffic is None else _activity(notebook, traffic)

    def pending(self) -> list[NotebookActivity]:
        """Notebooks with news since the last :meth:`acknowledge`, as they are now."""
        return [_activity(n, t) for n, t in sorted(self._traffic.items()) if t.dirty]

    def acknowledge(self, sent: list[NotebookActivity]) -> None:
        """``sent`` reached the scheduler: those notebooks are clean unless something changed
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
        signal=traffic.signal,
    )
