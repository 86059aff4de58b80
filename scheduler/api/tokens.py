"""``/v1/tokens``: a project's own tokens. Operators create and delete, any project token
lists; the secret is shown once, at creation, and never stored."""

from __future__ import annotations

from aiohttp import web

from common import wire
from common.http_server import read_json
from scheduler.api.auth import project_principal
from scheduler.api.context import ctx
from scheduler.api.replies import json_reply


async def create_token(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.ProjectTokenCreate)
    return json_reply(await ctx(request).projects.create_project_token(principal, body), 201)


async def list_tokens(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    return json_reply(wire.TokenList(items=await ctx(request).projects.list_tokens(principal)))


async def delete_token(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    token_id = request.match_info["id"]
    return json_reply(await ctx(request).projects.delete_token(principal, token_id))
