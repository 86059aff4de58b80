"""HTTP routes of the scheduler; handlers stay thin (decode, authorize, call, encode)."""

from __future__ import annotations

from aiohttp import web

from scheduler.api import admin, agents, datastores, datasync, editor, tokens, usage, user
from scheduler.api.replies import Handler, guarded, unmatched
from scheduler.console.routes import add_console_routes


class _Guarded:
    """``app.router``'s ``add_*`` with every handler :func:`guarded`."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        self._router = router

    def add_get(self, path: str, handler: Handler) -> None:
        self._router.add_get(path, guarded(handler, path))

    def add_post(self, path: str, handler: Handler) -> None:
        self._router.add_post(path, guarded(handler, path))

    def add_put(self, path: str, handler: Handler) -> None:
        self._router.add_put(path, guarded(handler, path))

    def add_patch(self, path: str, handler: Handler) -> None:
        self._router.add_patch(path, guarded(handler, path))

    def add_delete(self, path: str, handler: Handler) -> None:
        self._router.add_delete(path, guarded(handler, path))

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self._router.add_route(method, path, guarded(handler, path))


def add_routes(app: web.Application) -> None:
    r = _Guarded(app.router)
    r.add_get("/health", user.health)
    r.add_get("/v1/catalog", user.catalog)
    r.add_get("/v1/quota", user.own_quota)
    r.add_get("/v1/projects/{project}/usage", usage.project_usage)
    r.add_post("/v1/notebooks", user.create_notebook)
    r.add_get("/v1/notebooks", user.list_notebooks)
    r.add_get("/v1/notebooks/{id}", user.get_notebook)
    r.add_delete("/v1/notebooks/{id}", user.delete_notebook)
    r.add_post("/v1/notebooks/{id}/start", user.start_notebook)
    r.add_post("/v1/notebooks/{id}/stop", user.stop_notebook)
    r.add_get("/v1/notebooks/{id}/history", user.notebook_history)
    r.add_get("/v1/notebooks/{id}/logs", user.notebook_logs)
    r.add_post("/v1/notebooks/{id}/exec", user.exec_in_notebook)
    r.add_put("/v1/notebooks/{id}/ssh-keys", user.set_ssh_keys)
    r.add_put("/v1/notebooks/{id}", user.update_notebook)
    r.add_post("/v1/notebooks/{id}/datasync", datasync.datasync)
    r.add_post("/v1/datastores", datastores.create_datastore)
    r.add_get("/v1/datastores", datastores.list_datastores)
    r.add_delete("/v1/datastores/{alias}", datastores.delete_datastore)
    r.add_get("/v1/notebooks/{id}/backups", user.notebook_backups)
    r.add_post("/v1/notebooks/{id}/fork", user.fork_notebook)
    r.add_post("/v1/tokens", tokens.create_token)
    r.add_get("/v1/tokens", tokens.list_tokens)
    r.add_delete("/v1/tokens/{id}", tokens.delete_token)

    # A notebook's stable URL (any method: the browser's first request may be a POST or a
    # WebSocket upgrade as well as a GET), redirected to the agent that runs it now.
    r.add_route("*", "/notebooks/{id}", editor.open_editor)
    r.add_route("*", "/notebooks/{id}/{tail:.*}", editor.open_editor)

    r.add_get("/v1/router/notebooks/{id}", editor.route)

    r.add_post("/v1/admin/projects", admin.create_project)
    r.add_get("/v1/admin/projects", admin.list_projects)
    r.add_post("/v1/admin/tokens", admin.create_token)
    r.add_get("/v1/admin/projects/{name}", admin.get_project)
    r.add_patch("/v1/admin/projects/{name}/quota", admin.set_quota)
    r.add_get("/v1/admin/hosts", admin.list_hosts)
    r.add_post("/v1/admin/hosts/{id}/cordon", admin.cordon_host)
    r.add_post("/v1/admin/hosts/{id}/drain", admin.drain_host)
    r.add_post("/v1/admin/hosts/{id}/uncordon", admin.uncordon_host)
    r.add_get("/v1/admin/usage", admin.usage)
    r.add_get("/metrics", admin.metrics)

    r.add_post("/v1/agents/register", agents.register)
    r.add_post("/v1/agents/heartbeat", agents.heartbeat)
    r.add_get("/v1/agents/assignments", agents.assignments)
    r.add_post("/v1/agents/transitions", agents.transitions)
    r.add_post("/v1/agents/usage", agents.usage)
    r.add_post("/v1/agents/snapshots", agents.snapshots)
    r.add_post("/v1/agents/progress", agents.progress)
    r.add_post("/v1/agents/authorize", agents.authorize)

    # The web console (HTML pages over the same services).
    add_console_routes(r.add_get, r.add_post)
    # Last: what no route above took (404, or 405 for a known path).
    app.router.add_route("*", "/{tail:.*}", guarded(unmatched, "unmatched"))
