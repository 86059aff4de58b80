"""One place that turns every failure into ``{"code", "message", "detail"}``: :func:`guarded`
around every route's handler, and :func:`unmatched` for a request no route takes."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from common import wire
from common.errors import STATUS, ApiError, code_for_status
from scheduler.metrics import observe_request

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Largest request body accepted; every body in the API is a small JSON document.
MAX_BODY_BYTES = 1 << 20

#: Statuses aiohttp raises itself, mapped to our codes (404 no route, 405, 413 body too big).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def json_reply(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=wire.encode(obj), status=status, content_type="application/json")


def error_reply(status: int, code: str, message: str, detail: dict[str, Any]) -> web.Response:
    return json_reply(wire.ErrorBody(code=code, message=message, detail=detail), status)


def guarded(handler: Handler, route: str) -> Handler:
    """``handler`` (of ``route``, a path template) answering every failure as ``{"code",
    "message", "detail"}``: an :class:`ApiError` with its status, aiohttp's HTTP errors (413
    body too large) with theirs, anything else as a logged 500; and timing every request
    (``nbfleet_request_duration_seconds``, :mod:`scheduler.metrics`).

    Each route's handler is wrapped (:func:`scheduler.api.add_routes`) rather than the app
    given a middleware: with any middleware, aiohttp runs every request through two more
    coroutines (the middleware and its own that sets the current app), which
    scripts/bench-scheduler measured at a few percent of a heartbeat's cost."""

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_reply(exc.status, exc.code, exc.message, exc.detail)
        except web.HTTPException as exc:
            if exc.status < 400:
                observe_request(route, request.method, exc.status, time.perf_counter() - started)
                raise
            response = _http_error(request, exc.status, exc.reason)
        except Exception:
            log.exception("request %s %s failed unexpectedly", request.method, request.path_qs)
            response = error_reply(
                500, "internal", "internal error; the scheduler logged the details", {}
            )
        observe_request(route, request.method, response.status, time.perf_counter() - started)
        return response

    return guard


async def unmatched(request: web.Request) -> web.StreamResponse:
    """The last route, ``* /{tail:.*}``: a request no other route took. 405 when another
    route has the path for other methods, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        return _http_error(request, 405, "Method Not Allowed")
    return _http_error(request, 404, "Not Found")


def _http_error(request: web.Request, status: int, reason: str) -> web.Response:
    code = _HTTP_CODES.get(status, "")
    if code not in STATUS:
        code = code_for_status(status)
    if status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.path}"
    elif status == 413:
        message = f"request body too large (at most {MAX_BODY_BYTES} bytes)"
    else:
        message = reason
    return error_reply(status, code, message, {})
