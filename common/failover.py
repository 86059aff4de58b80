"""Several scheduler URLs (replicas, or load balancers in front of them): which one a client
sends a request to, and which failures send it on to the next one.

The agent's signed client (:mod:`agent.client`) and the CLI's (:mod:`cli.client`) both use
this, so the two read the setting and judge a failure the same way.

The setting (the agent's ``scheduler_url``, the CLI's ``url``): one URL, several separated
by commas (how an environment variable or a flag carries a list), or a TOML list of those.

Which URL: the one that answered last; at first the first one configured. A request that gets
no answer there goes at once to the others, in configured order after it, each once. The one
that answers is used from then on: it sticks even when an earlier one comes back, so clients
do not flap between replicas, and a client only moves when its replica stops answering.

No answer is: the connection could not be made or broke, no reply in time, or a 502, 503 or
504 whose body is not the API's error body (a load balancer or proxy with no working replica
behind it). Anything else is an answer, errors included: a 4xx, a 500, and the API's own 503
``no_capacity`` and 502 ``upstream_unavailable``, which every replica would answer alike.

Sending again after no answer depends on how far the request got (:class:`Unanswered`). One
that failed before it was sent (connection refused, unknown name, connect timeout, a 503 from
a proxy that had no replica to give it to) was applied nowhere, and goes to the next URL
whatever its method. One that was sent and got no answer (a reply timeout, a connection closed
before the reply, a 502 or 504 from a proxy, which passed it on) may have been applied; it goes
to the next URL only when applying it twice is harmless: HTTP's idempotent methods
(:data:`IDEMPOTENT_METHODS`, as RFC 9110 defines them and urllib3 retries them), or any
request of a protocol that is idempotent throughout (the agent protocol is).
"""

from __future__ import annotations

import enum
import http
from collections.abc import Sequence
from urllib.parse import urlsplit

from common.wire import error_from_body

#: Methods whose repeat has the effect of one request (RFC 9110, section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class Unanswered(enum.Enum):
    """How far a request got when it got no answer."""

    #: Applied nowhere: it may go to another replica whatever its method.
    NOT_SENT = "not sent"
    #: A replica may have applied it.
    SENT = "sent, no reply"


#: What a proxy's status says about the request it did not pass on, or passed on in vain.
_PROXY_STATUSES = {502: Unanswered.SENT, 503: Unanswered.NOT_SENT, 504: Unanswered.SENT}


def proxy_failure(status: int, body: bytes) -> Unanswered | None:
    """``None`` when ``status`` and ``body`` are the API's answer; else how far the request
    got behind the proxy (or replica going away) that answered instead."""
    if status not in _PROXY_STATUSES or error_from_body(status, body) is not None:
        return None
    return _PROXY_STATUSES[status]


def proxy_reason(status: int) -> str:
    """How a proxy's answer is named where the URLs tried are listed."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def may_send_again(method: str, failure: Unanswered) -> bool:
    """Whether a request that got ``failure`` may go to another URL (see the module's text)."""
    return failure is Unanswered.NOT_SENT or method.upper() in IDEMPOTENT_METHODS


def parse_urls(setting: str | Sequence[str], name: str) -> tuple[str, ...]:
    """The URLs ``setting`` names, in order, without trailing slashes or repeats. Raises
    ``ValueError`` naming the setting ``name`` when one is not an http(s) URL or none is
    given."""
    pieces = [setting] if isinstance(setting, str) else list(setting)
    urls: list[str] = []
    for piece in pieces:
        for part in piece.split(","):
            url = part.strip().rstrip("/")
            if not url:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name}: {part.strip()!r} is not an http:// or https:// URL")
            if parts.query or parts.fragment:
                raise ValueError(f"{name}: {url!r} has a query or fragment; give the base URL")
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError(f"{name} names no scheduler URL")
    return tuple(urls)


class SchedulerUrls:
    """The URLs a client may send to, and the one it sends to first (see the module's text).

    Safe to share between the tasks of one event loop: :meth:`answered` only moves to another
    URL when the URL in use is still the one the answered request started from, so requests
    that started before a switch and were answered by the old URL do not move it back."""

    def __init__(self, setting: str | Sequence[str], *, name: str) -> None:
        self.urls = parse_urls(setting, name)
        #: Where the next request goes first: the URL that answered last.
        self.current = self.urls[0]

    def in_order(self) -> list[str]:
        """The URLs to try for one request: the current one, then the others after it."""
        at = self.urls.index(self.current)
        return [*self.urls[at:], *self.urls[:at]]

    def answered(self, first: str, url: str) -> bool:
        """``url`` answered a request first sent to ``first``; True when requests go to
        ``url`` from now on where they went to ``first`` (the caller logs the switch)."""
        if url == first or self.current != first:
            return False
        self.current = url
        return True

    def __str__(self) -> str:
        """The setting's text: every URL, comma-separated."""
        return ",".join(self.urls)


def tried_text(tried: Sequence[tuple[str, str]]) -> str:
    """``url (why), url (why)`` for the URLs a request went to without an answer."""
    return ", ".join(f"{url} ({why})" for url, why in tried)
