"""One place that turns every failure into ``{"code", "message", "detail"}``."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from common import wire
from common.errors import STATUS, ApiError, code_for_status

log = logging.getLogger(__name__)

#: Largest request body accepted; every body in the API is a small JSON document.
MAX_BODY_BYTES = 1 << 20

#: Statuses aiohttp raises itself, mapped to our codes (404 no route, 405, 413 body too big).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def json_reply(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=wire.encode(obj), status=status, content_type="application/json")


def error_reply(status: int, code: str, message: str, detail: dict[str, Any]) -> web.Response:
    return json_reply(wire.ErrorBody(code=code, message=message, detail=detail), status)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_reply(exc.status, exc.code, exc.message, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "")
        if code not in STATUS:
            code = code_for_status(exc.status)
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            message = f"request body too large (at most {MAX_BODY_BYTES} bytes)"
        else:
            message = exc.reason
        return error_reply(exc.status, code, message, {})
    except Exception:
        log.exception("request %s %s failed unexpectedly", request.method, request.path_qs)
        return error_reply(500, "internal", "internal error; the scheduler logged the details", {})
