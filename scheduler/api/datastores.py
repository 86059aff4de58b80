"""``/v1/datastores``: a project's S3 datastore aliases. Operators add and delete, any project
token lists; replies never carry credentials."""

from __future__ import annotations

from aiohttp import web

from common import wire
from common.http_server import read_json
from scheduler.api.auth import project_principal
from scheduler.api.context import ctx
from scheduler.api.replies import json_reply
from scheduler.datastores import DatastoreService


def _service(request: web.Request) -> DatastoreService:
    context = ctx(request)
    return DatastoreService(context.db, context.clock)


async def create_datastore(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.DatastoreCreate)
    return json_reply(await _service(request).create(principal.project, body), 201)


async def list_datastores(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    return json_reply(wire.DatastoreList(items=await _service(request).list(principal.project)))


async def delete_datastore(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    alias = request.match_info["alias"]
    return json_reply(await _service(request).delete(principal.project, alias))
