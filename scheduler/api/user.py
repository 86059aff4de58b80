"""User API handlers: decode, authorize, call the notebook service, encode."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from common import __version__, wire
from common.errors import ApiError, invalid
from common.http_server import read_json
from scheduler import catalog as catalog_service
from scheduler.api.auth import project_principal
from scheduler.api.context import ctx
from scheduler.api.editor import with_url
from scheduler.api.query import int_param
from scheduler.api.replies import json_reply
from scheduler.notebook_requests import parse_label_selector, parse_states

log = logging.getLogger(__name__)

#: While a followed log is quiet, how often to look whether its reader is still there.
FOLLOW_CHECK_S = 5.0


#: A health check that waits longer than this for the database calls it unreachable.
HEALTH_DATABASE_TIMEOUT_S = 2.0


async def health(request: web.Request) -> web.Response:
    """Open to all (load balancers check it). 503 when this replica cannot reach its database:
    it could answer nothing else, and a load balancer should send requests elsewhere."""
    try:
        await asyncio.wait_for(
            ctx(request).db.query_one("SELECT 1 AS ok"), HEALTH_DATABASE_TIMEOUT_S
        )
    except Exception as exc:
        log.warning("health: the database does not answer (%r); answering 503", exc)
        status = f"database unreachable ({type(exc).__name__})"
        return json_reply(wire.Health(status=status, version=__version__), 503)
    return json_reply(wire.Health(status="ok", version=__version__))


async def create_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.NotebookCreate)
    notebook = await ctx(request).notebooks.create(
        principal.project, body, selector=principal.selector
    )
    return json_reply(with_url(request, notebook), 201)


async def list_notebooks(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    states = parse_states(request.query.getall("state", []))
    labels: dict[str, str] = {}
    for selector in request.query.getall("label", []):
        key, value = parse_label_selector(selector)
        if labels.get(key, value) != value:
            raise ApiError(
                "invalid_request",
                f"invalid query parameter `label`: {key} asked to be both "
                f"{labels[key]!r} and {value!r}",
                field="label",
            )
        labels[key] = value
    items = await ctx(request).notebook_views.list(
        principal.project, states=states, labels=labels, selector=principal.selector
    )
    return json_reply(wire.NotebookList(items=[with_url(request, nb) for nb in items]))


async def get_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    notebook = await ctx(request).notebook_views.get(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(with_url(request, notebook))


async def notebook_history(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    history = await ctx(request).notebook_views.history(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(history)


async def start_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    notebook = await ctx(request).notebooks.start(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(with_url(request, notebook), 202)


async def stop_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    notebook = await ctx(request).notebooks.stop(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(with_url(request, notebook), 202)


async def delete_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    notebook = await ctx(request).notebooks.delete(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(with_url(request, notebook), 202)


async def notebook_logs(request: web.Request) -> web.StreamResponse:
    principal = await project_principal(request)
    tail = int_param(request, "tail", default=None, low=0, high=100_000)
    follow = request.query.get("follow", "0")
    if follow not in ("0", "1", "true", "false"):
        raise invalid(f"invalid query parameter `follow`: {follow!r} is not 0 or 1", field="follow")
    notebook_id = request.match_info["id"]
    context = ctx(request)
    host_id, agent_url = await context.notebook_views.log_source(
        principal.project, notebook_id, principal.selector
    )
    if follow in ("1", "true"):
        return await follow_logs(request, host_id, agent_url, notebook_id, tail)
    text = await context.agent_client.logs(host_id, agent_url, notebook_id, tail)
    return web.Response(text=text, content_type="text/plain")


async def follow_logs(
    request: web.Request, host_id: str, agent_url: str, notebook_id: str, tail: int | None
) -> web.StreamResponse:
    """Relay the agent's followed logs as they come, until the agent ends them or the reader
    leaves (noticed at the next chunk, or within ``FOLLOW_CHECK_S`` while the log is quiet).
    Closing the upstream response is what tells the agent to stop following."""
    client = ctx(request).agent_client
    async with client.follow_logs(host_id, agent_url, notebook_id, tail) as upstream:
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        while True:
            try:
                chunk = await asyncio.wait_for(upstream.readany(), FOLLOW_CHECK_S)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    log.debug("notebook=%s log follower left", notebook_id)
                    return response
                continue
            except aiohttp.ClientError as exc:
                # The status is sent already: say it in the text, where the reader looks.
                log.warning(
                    "notebook=%s host=%s log stream broke off: %r", notebook_id, host_id, exc
                )
                chunk = f"\n[nbfleet: the log stream from host {host_id} broke off: {exc!r}]\n"
                await _write_quietly(response, chunk.encode())
                return response
            if not chunk:
                break
            if not await _write_quietly(response, chunk):
                log.debug("notebook=%s log follower left", notebook_id)
                return response
    await response.write_eof()
    return response


async def _write_quietly(response: web.StreamResponse, chunk: bytes) -> bool:
    """False when the reader has gone."""
    try:
        await response.write(chunk)
    except ConnectionError:
        return False
    return True


async def exec_in_notebook(request: web.Request) -> web.Response:
    """Run a command in a RUNNING notebook's container (operator role), via its agent."""
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.ExecRequest)
    notebook_id = request.match_info["id"]
    context = ctx(request)
    host_id, agent_url = await context.notebook_views.exec_target(
        principal.project, notebook_id, principal.selector
    )
    log.info(
        "notebook=%s host=%s exec %r for project %s",
        notebook_id,
        host_id,
        body.command[0],
        principal.project,
    )
    return json_reply(await context.agent_client.exec(host_id, agent_url, notebook_id, body))


async def catalog(request: web.Request) -> web.Response:
    await project_principal(request)
    context = ctx(request)
    return json_reply(
        catalog_service.catalog(context.config, await catalog_service.host_images(context.db))
    )


async def update_notebook(request: web.Request) -> web.Response:
    """Change a notebook (operator role): ``wire.NotebookUpdate``."""
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.NotebookUpdate)
    notebook = await ctx(request).notebooks.update(
        principal.project, request.match_info["id"], body, principal.selector
    )
    return json_reply(with_url(request, notebook))


async def set_ssh_keys(request: web.Request) -> web.Response:
    """Replace a notebook's SSH keys (operator role)."""
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.SshKeysUpdate)
    notebook = await ctx(request).notebooks.set_ssh_keys(
        principal.project, request.match_info["id"], body, principal.selector
    )
    return json_reply(with_url(request, notebook))


async def notebook_backups(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    notebook_id = request.match_info["id"]
    await ctx(request).notebook_views.backups_of(principal.project, notebook_id, principal.selector)
    return json_reply(await ctx(request).snapshots.backups(notebook_id))


async def fork_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.NotebookFork)
    notebook = await ctx(request).notebooks.fork(
        principal.project, request.match_info["id"], body, principal.selector
    )
    return json_reply(with_url(request, notebook), 201)


async def own_quota(request: web.Request) -> web.Response:
    """The caller's project with its quota, current use and queued count."""
    principal = await project_principal(request)
    return json_reply(await ctx(request).projects.get_project(principal.project))
