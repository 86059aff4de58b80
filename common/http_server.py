"""What the scheduler's and the agent's HTTP servers share: how a malformed request is logged,
and which request bodies a JSON endpoint accepts.

**Malformed requests.** aiohttp answers a request line or header it cannot parse with 400 and
closes the connection, which is right; but it also logs each one as an ERROR with a traceback
(``aiohttp.server``), so any client could fill the logs. Each server passes a
:class:`MalformedRequestLog` as its request handlers' logger (:func:`handler_args`), which turns
those into one WARNING line without a traceback, at most one per ``interval_s`` per server; the
next line counts the ones left out. Everything else aiohttp logs passes through unchanged.

**JSON bodies.** :func:`read_json` and :func:`decode_json` decode a body only when the request
declares it JSON (``application/json``, charset absent or UTF-8): anything else is 415
``unsupported_media_type``. An empty body is not checked: it is the 400 "body is empty" of
:func:`common.wire.decode`, whatever its Content-Type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from email.message import Message
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from common import wire
from common.errors import ApiError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: At most one malformed-request warning per server this often.
MALFORMED_LOG_INTERVAL_S = 60.0
#: The longest description of what was wrong that a warning quotes.
MAX_DESCRIPTION = 200

JSON = "application/json"
_UTF8 = {"utf-8", "utf8"}


class MalformedRequestLog(logging.LoggerAdapter):
    """The logger of one server's request handlers (aiohttp's ``RequestHandler(logger=...)``).

    A record carrying an :class:`aiohttp.http_exceptions.HttpProcessingError` (a request line,
    header or framing aiohttp could not parse; it has answered 400 and closes the connection)
    becomes ``<subject> peer=<address> sent a malformed HTTP request (<what>)...`` on this
    module's logger at WARNING, without a traceback, at most once per ``interval_s``; the
    next warning says how many were left out. aiohttp passes the peer address as the record's
    one argument (``"Error handling request from %s"``). Other records go to ``logger``
    unchanged.
    """

    def __init__(
        self,
        subject: str,
        *,
        logger: logging.Logger = server_logger,
        interval_s: float = MALFORMED_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self.subject = subject
        self.interval_s = interval_s
        self.clock = clock
        #: Malformed requests not logged since the last warning.
        self.suppressed = 0
        self._quiet_until: float | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            peer = args[0] if len(args) == 1 and args[0] else "unknown"
            self.malformed(str(peer), exc)
            return
        super().log(level, msg, *args, **kwargs)

    def malformed(self, peer: str, exc: HttpProcessingError) -> None:
        now = self.clock()
        if self._quiet_until is not None and now < self._quiet_until:
            self.suppressed += 1
            return
        self._quiet_until = now + self.interval_s
        left_out, self.suppressed = self.suppressed, 0
        log.warning(
            "%s peer=%s sent a malformed HTTP request (%s); answered 400 and closed the "
            "connection%s",
            self.subject,
            peer,
            describe(exc),
            f"; {left_out} more since the last such warning were not logged" if left_out else "",
        )


def describe(exc: HttpProcessingError) -> str:
    """aiohttp's multi-line parser message (what, the offending bytes, a caret under them) as
    one printable line."""
    lines = (line.strip() for line in (exc.message or str(exc)).splitlines())
    text = " ".join(line for line in lines if line and set(line) != {"^"})
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 3] + "..."
    return text or type(exc).__name__


#: The cyclic garbage collector's thresholds for a control-plane server (:func:`serve`).
GC_THRESHOLDS = (20_000, 50, 1_000)


def serve(app: web.Application, host: str, port: int) -> None:
    """Run a control-plane server (the scheduler, the router) until SIGINT or SIGTERM: on
    uvloop (every request, and on PostgreSQL every statement's answer, is a wake-up of the
    loop, which libuv makes cheaper: see bench-scheduler), without an access log, with 5 s for
    requests in flight at shutdown.

    Python's cyclic garbage collector runs less often (:data:`GC_THRESHOLDS`), and never looks
    again at what was loaded before serving (``gc.freeze``): a request allocates a few hundred
    objects, nearly all freed at once by reference counting, so the default (a collection
    every 700 net allocations, walking the young objects each time and, every few, the
    server's whole state) cost the scheduler about a sixth of its CPU per heartbeat
    (bench-scheduler, two PostgreSQL replicas: 250 -> 205 µs a heartbeat). Cycles are still
    collected, every 20,000 net allocations."""
    import gc

    import uvloop

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=5,
        loop=uvloop.new_event_loop(),
    )


def handler_args(subject: str) -> dict[str, Any]:
    """``web.Application(handler_args=...)`` of a server whose malformed-request warnings
    start with ``subject`` (``scheduler``, ``host=h1 agent``)."""
    return {"logger": MalformedRequestLog(subject)}


def check_json_content_type(content_type: str | None) -> None:
    """415 unless ``content_type`` (a Content-Type header) is ``application/json``, with no
    charset or UTF-8."""
    if content_type == JSON:  # what every client of ours sends: no header to parse
        return
    if content_type:
        header = Message()
        header["Content-Type"] = content_type
        media_type, charset = header.get_content_type(), header.get_content_charset()
        if media_type == JSON and (charset is None or charset in _UTF8):
            return
    shown = repr(content_type) if content_type else "missing"
    raise ApiError(
        "unsupported_media_type",
        f"request body must be JSON: Content-Type is {shown}, expected {JSON}",
        content_type=content_type or "",
    )


def decode_json(request: web.BaseRequest, body: bytes, type_: type[T]) -> T:
    """``body``, already read from ``request`` (e.g. to check its signature), decoded as
    ``type_``: 415 unless it is declared JSON, 400 naming the field that does not fit."""
    if body:
        check_json_content_type(request.headers.get("Content-Type"))
    return wire.decode(body, type_)


async def read_json(request: web.BaseRequest, type_: type[T]) -> T:
    """The request's body decoded as ``type_`` (see :func:`decode_json`)."""
    return decode_json(request, await request.read(), type_)
