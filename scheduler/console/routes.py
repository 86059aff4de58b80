"""The console's routes (under ``/console/``) and its static files."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from scheduler.console import access, notebooks, operators, project, run_form
from scheduler.console.web import (
    page,
)

_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    body = resources.files("scheduler.console").joinpath("static", name).read_bytes()
    response = web.Response(body=body, content_type=_STATIC[name])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def add_console_routes(add_get, add_post) -> None:
    """The console's routes, through the API's guarded ``add_get``/``add_post``."""
    add_get("/console", access.index)
    add_get("/console/", access.index)
    add_get("/console/static/{name}", static)
    add_get("/console/sign-in", access.sign_in_form)
    add_post("/console/sign-in", access.sign_in)
    add_post("/console/sign-out", access.sign_out)
    add_get("/console/notebooks", page(notebooks.notebooks))
    add_get("/console/notebooks/new", page(run_form.run_form))
    add_post("/console/notebooks/new", page(run_form.run, post=True, operate=True))
    add_get("/console/notebooks/{id}", page(notebooks.notebook))
    add_get("/console/notebooks/{id}/open", page(notebooks.open_editor))
    add_get("/console/notebooks/{id}/logs", page(notebooks.logs))
    add_post("/console/notebooks/{id}/fork", page(notebooks.fork, post=True, operate=True))
    add_post("/console/notebooks/{id}/{action}", page(notebooks.act, post=True, operate=True))
    add_get("/console/usage", page(project.usage))
    add_get("/console/tokens", page(project.tokens))
    add_post("/console/tokens", page(project.create_token, post=True, operate=True))
    add_post("/console/tokens/{id}/delete", page(project.delete_token, post=True, operate=True))
    add_get("/console/datastores", page(project.datastores))
    add_post("/console/datastores", page(project.create_datastore, post=True, operate=True))
    add_post(
        "/console/datastores/{alias}/delete",
        page(project.delete_datastore, post=True, operate=True),
    )
    add_get("/console/hosts", page(operators.hosts, admin=True))
    add_get("/console/projects", page(operators.projects, admin=True))
    add_post("/console/projects", page(operators.create_project, post=True, admin=True))
    add_post("/console/projects/{name}/quota", page(operators.set_quota, post=True, admin=True))
    add_post("/console/hosts/{id}/{action}", page(operators.host_action, post=True, admin=True))
