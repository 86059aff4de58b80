"""User API handlers: decode, authorize, call the notebook service, encode."""

from __future__ import annotations

from aiohttp import web

from common import __version__, wire
from common.errors import ApiError
from scheduler.api.auth import project_principal
from scheduler.api.context import ctx
from scheduler.api.middleware import json_reply
from scheduler.api.query import int_param
from scheduler.notebooks import parse_label_selector, parse_states


async def health(request: web.Request) -> web.Response:
    return json_reply(wire.Health(status="ok", version=__version__))


async def create_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    body = wire.decode(await request.read(), wire.NotebookCreate)
    notebook = await ctx(request).notebooks.create(
        principal.project, body, selector=principal.selector
    )
    return json_reply(notebook, 201)


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
    items = await ctx(request).notebooks.list(
        principal.project, states=states, labels=labels, selector=principal.selector
    )
    return json_reply(wire.NotebookList(items=items))


async def get_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    notebook = await ctx(request).notebooks.get(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(notebook)


async def notebook_history(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    history = await ctx(request).notebooks.history(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(history)


async def start_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    notebook = await ctx(request).notebooks.start(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(notebook, 202)


async def stop_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    notebook = await ctx(request).notebooks.stop(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(notebook, 202)


async def delete_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    notebook = await ctx(request).notebooks.delete(
        principal.project, request.match_info["id"], principal.selector
    )
    return json_reply(notebook, 202)


async def notebook_logs(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    tail = int_param(request, "tail", default=None, low=0, high=100_000)
    notebook_id = request.match_info["id"]
    context = ctx(request)
    host_id, agent_url = await context.notebooks.log_source(
        principal.project, notebook_id, principal.selector
    )
    text = await context.agent_client.logs(host_id, agent_url, notebook_id, tail)
    return web.Response(text=text, content_type="text/plain")


async def catalog(request: web.Request) -> web.Response:
    await project_principal(request)
    spec = ctx(request).config.catalog
    return json_reply(
        wire.Catalog(
            frameworks=[
                wire.CatalogFramework(
                    name=name, image=f.image, editors=list(f.editors), description=f.description
                )
                for name, f in sorted(spec.frameworks.items())
            ],
            editors=[
                wire.CatalogEditor(name=name, port=e.port, description=e.description)
                for name, e in sorted(spec.editors.items())
            ],
            flavors=[
                wire.CatalogFlavor(
                    name=name,
                    gpu_model=f.gpu_model,
                    cpu=f.cpu,
                    memory_mb=f.memory_mb,
                    disk_gb=f.disk_gb,
                    description=f.description,
                )
                for name, f in sorted(ctx(request).config.flavors.items())
            ],
        )
    )


async def notebook_backups(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    notebook_id = request.match_info["id"]
    await ctx(request).notebooks.backups_of(principal.project, notebook_id, principal.selector)
    return json_reply(await ctx(request).snapshots.backups(notebook_id))


async def fork_notebook(request: web.Request) -> web.Response:
    principal = await project_principal(request, operate=True)
    body = wire.decode(await request.read(), wire.NotebookFork)
    notebook = await ctx(request).notebooks.fork(
        principal.project, request.match_info["id"], body, principal.selector
    )
    return json_reply(notebook, 201)


async def own_quota(request: web.Request) -> web.Response:
    """The caller's project with its quota, current use and queued count."""
    principal = await project_principal(request)
    return json_reply(await ctx(request).projects.get_project(principal.project))
