"""Operator API handlers (admin token only)."""

from __future__ import annotations

from aiohttp import web

from common import wire
from scheduler.api.auth import require_admin
from scheduler.api.context import ctx
from scheduler.api.middleware import json_reply


async def create_project(request: web.Request) -> web.Response:
    await require_admin(request)
    body = wire.decode(await request.read(), wire.ProjectCreate)
    return json_reply(await ctx(request).projects.create_project(body), 201)


async def list_projects(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_reply(wire.ProjectList(items=await ctx(request).projects.list_projects()))


async def create_token(request: web.Request) -> web.Response:
    await require_admin(request)
    body = wire.decode(await request.read(), wire.TokenCreate)
    return json_reply(await ctx(request).projects.create_token(body), 201)


async def list_hosts(request: web.Request) -> web.Response:
    await require_admin(request)
    return json_reply(wire.HostList(items=await ctx(request).agents.hosts()))
