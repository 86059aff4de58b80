"""``nbfleet-router``'s app: notebooks' stable URLs, ``/notebooks/{id}/...``, forwarded to the
agent of the host that runs the notebook (:mod:`common.notebook_forward`, as the scheduler
replicas forward them), at the location :mod:`router.routes` knows, so open editors outlive
every replica. The load balancer sends ``/notebooks/`` here and everything else to the replicas
(``deploy/haproxy.cfg``).

Like the replicas, the router authenticates nobody: the agent's proxy checks every request's
token. What a notebook that is not running shows (its state, what to do) is the scheduler's
answer, forwarded; while no scheduler answers, a notebook the router cannot place gets 503 with
the reason, in plain text for the person in the browser. ``/health`` answers without a
scheduler: a router is healthy when it can serve what it knows.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from common.http_server import handler_args
from common.notebook_forward import NotebookForwarder, plain_text
from common.notebook_urls import with_slash
from router.routes import Refused, Routes, Unavailable

log = logging.getLogger(__name__)

ROUTES = web.AppKey("nbfleet_routes", Routes)
FORWARDER = web.AppKey("nbfleet_forwarder", NotebookForwarder)

#: Seconds a browser is asked to wait before trying again while no scheduler answers.
RETRY_AFTER_S = 10


def create_app(routes: Routes) -> web.Application:
    app = web.Application(handler_args=handler_args("router"))
    app[ROUTES] = routes
    app[FORWARDER] = NotebookForwarder()
    app.router.add_get("/health", _health)
    # Any method: a browser's first request may be a POST or a WebSocket upgrade.
    app.router.add_route("*", "/notebooks/{id}", _open_editor)
    app.router.add_route("*", "/notebooks/{id}/{tail:.*}", _open_editor)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    await app[ROUTES].start()
    try:
        yield
    finally:
        await app[FORWARDER].close()
        await app[ROUTES].close()


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _open_editor(request: web.Request) -> web.StreamResponse:
    notebook_id = request.match_info["id"]
    location = with_slash(notebook_id, request.rel_url.raw_path, request.rel_url.raw_query_string)
    if location is not None:
        return plain_text(307, f"notebook {notebook_id} is at {location}", Location=location)
    try:
        found = await request.app[ROUTES].locate(notebook_id)
    except Refused as exc:
        return plain_text(502, f"notebook {notebook_id}: {exc}")
    except Unavailable as exc:
        return plain_text(503, str(exc), **{"Retry-After": str(RETRY_AFTER_S)})
    forwarder = request.app[FORWARDER]
    if found.agent_url is not None:
        return await forwarder.forward(request, notebook_id, found.agent_url)
    # Not running: the scheduler says what it is and what to do, as at its own address.
    return await forwarder.forward(request, notebook_id, found.scheduler_url)
