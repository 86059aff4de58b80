"""``/notebooks/{id}/...``: a notebook's stable URL, forwarded to the agent that runs it now
(:mod:`common.notebook_forward`; :mod:`scheduler.access` for where that is).

Not authenticated here on purpose: the agent's proxy checks the project token of every
forwarded request, and a notebook that is not running only has its state told. Those answers
are plain text, for a person in a browser.
"""

from __future__ import annotations

from aiohttp import web

from common import wire
from common.notebook_forward import plain_text
from common.notebook_urls import with_slash
from common.states import NotebookState
from scheduler.access import locate
from scheduler.api.auth import require_router
from scheduler.api.context import ctx
from scheduler.api.replies import json_reply

S = NotebookState

#: Seconds a browser is asked to wait before trying a notebook that is on its way again.
RETRY_AFTER_S = 5


def public_base(request: web.Request) -> str:
    """The configured ``public_url``, else ``scheme://host[:port]`` the caller reached the
    scheduler at, as a reverse proxy in front of it reports (``Forwarded``,
    ``X-Forwarded-Proto``/``-Host``) or else as the request shows. Only ever shown back to the
    same caller, so a forged header fools nobody else."""
    configured = ctx(request).config.public_url
    if configured:
        return configured.rstrip("/")
    forwarded = request.forwarded[0] if request.forwarded else {}
    scheme = (
        forwarded.get("proto")
        or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        or request.scheme
    )
    host = (
        forwarded.get("host")
        or request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        or request.host
    )
    return f"{scheme}://{host}"


def with_url(request: web.Request, nb: wire.Notebook) -> wire.Notebook:
    """The notebook's URL made absolute (the service gives the path; set while RUNNING)."""
    if nb.url is not None:
        nb.url = public_base(request) + nb.url
    return nb


async def route(request: web.Request) -> web.Response:
    """Where ``nbfleet-router`` sends the notebook's stable URL (the router token only)."""
    require_router(request)
    notebook_id = request.match_info["id"]
    where = await locate(ctx(request).db, notebook_id)
    found = wire.Route(
        notebook=notebook_id,
        state=None if where.state is None else where.state.value,
        agent_url=where.agent_url,
    )
    return json_reply(found)


async def open_editor(request: web.Request) -> web.StreamResponse:
    """Forward to the agent of the host running the notebook (path and query as sent); a
    notebook that is not running is answered with its state and what to do."""
    notebook_id = request.match_info["id"]
    where = await locate(ctx(request).db, notebook_id)
    start = f"nbfleet notebook start {notebook_id}"
    state = where.state
    if state is None or state == S.DELETED:
        return plain_text(404, f"notebook {notebook_id} does not exist")
    if where.agent_url is not None:
        location = with_slash(
            notebook_id, request.rel_url.raw_path, request.rel_url.raw_query_string
        )
        if location is not None:
            return plain_text(307, f"notebook {notebook_id} is at {location}", Location=location)
        return await ctx(request).forwarder.forward(request, notebook_id, where.agent_url)
    if state in (S.QUEUED, S.STARTING):
        return plain_text(
            503,
            f"notebook {notebook_id} is {state}, not running yet; this page opens once it is "
            f"RUNNING (see `nbfleet notebook get {notebook_id}`)",
            **{"Retry-After": str(RETRY_AFTER_S)},
        )
    if state == S.DELETING:
        return plain_text(409, f"notebook {notebook_id} is being deleted")
    if state == S.STOPPING:
        why = f"it is {state} (saving its workspace); once STOPPED, start it with `{start}`"
    else:
        why = f"it is {state}; start it with `{start}`"
    return plain_text(
        409,
        f"notebook {notebook_id} is not running: {why} (an operator token), then open this URL "
        "again.",
    )
