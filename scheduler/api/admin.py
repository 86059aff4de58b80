"""Operator API handlers (admin token only; ``/metrics`` also takes the scrape token)."""

from __future__ import annotations

from aiohttp import web

from common import wire
from common.http_server import read_json
from scheduler.api.auth import require_admin, require_scraper
from scheduler.api.context import ctx
from scheduler.api.replies import json_reply
from scheduler.api.usage import usage_report
from scheduler.metrics import render


async def create_project(request: web.Request) -> web.Response:
    await require_admin(request)
    body = await read_json(request, wire.ProjectCreate)
    return json_reply(await ctx(request).projects.create_project(body), 201)


async def list_projects(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_reply(wire.ProjectList(items=await ctx(request).projects.list_projects()))


async def create_token(request: web.Request) -> web.Response:
    await require_admin(request)
    body = await read_json(request, wire.TokenCreate)
    return json_reply(await ctx(request).projects.create_token(body), 201)


async def get_project(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_reply(await ctx(request).projects.get_project(request.match_info["name"]))


async def set_quota(request: web.Request) -> web.Response:
    await require_admin(request)
    body = await read_json(request, wire.QuotaUpdate)
    context = ctx(request)
    project = await context.projects.set_quota(request.match_info["name"], body)
    context.maintenance.wake()  # a raised quota may let queued notebooks start
    return json_reply(project)


async def list_hosts(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_reply(wire.HostList(items=await ctx(request).hosts.list()))


async def cordon_host(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_reply(await ctx(request).hosts.cordon(request.match_info["id"]))


async def drain_host(request: web.Request) -> web.Response:
    await require_admin(request)
    context = ctx(request)
    host = await context.hosts.drain(request.match_info["id"])
    return json_reply(host)


async def uncordon_host(request: web.Request) -> web.Response:
    await require_admin(request)
    context = ctx(request)
    host = await context.hosts.uncordon(request.match_info["id"])
    context.maintenance.wake()
    return json_reply(host)


async def usage(request: web.Request) -> web.Response:
    await require_admin(request)
    project = request.query.get("project") or None
    if project is not None:
        await ctx(request).projects.get_project(project)  # 404 for an unknown project
    return json_reply(
        await usage_report(
            request,
            projects=[project] if project else None,
            admin=True,
            default_group="project",
        )
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the scheduler's series (:mod:`scheduler.metrics`)."""
    require_scraper(request)
    context = ctx(request)
    body, content_type = await render(context.db, now=context.clock())
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
