"""The console's notebook pages: the list (refreshing itself), a notebook's page (summary,
output, backups with Fork, history), its actions, and Open.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from common import durations, notebook_text, wire
from common.errors import ApiError
from common.states import STARTABLE, STOPPABLE, NotebookState
from scheduler.api.context import ctx
from scheduler.api.editor import public_base
from scheduler.api.user import follow_logs
from scheduler.console import session
from scheduler.console.web import (
    REFRESH_S,
    SESSIONS,
    STATES,
    Viewer,
    render,
    secured,
    see_other,
)
from scheduler.notebook_requests import parse_label_selector, parse_states

S = NotebookState
#: Lines of a notebook's output its page shows (then follows).
LOG_LINES = 200


def _filters(request: web.Request) -> tuple[set[NotebookState], dict[str, str], str, str]:
    state = request.query.get("state", "")
    label = request.query.get("label", "").strip()
    states = parse_states([state]) if state else set()
    labels = dict([parse_label_selector(label)]) if label else {}
    return states, labels, state, label


def _row(nb: wire.Notebook) -> dict[str, Any]:
    if nb.progress is not None:
        status = notebook_text.progress(nb.progress)
    elif nb.queue is not None:
        status = notebook_text.queue_text(nb)
    else:
        status = nb.state_reason
    gpus = ", ".join(
        f"{g.model}{'' if g.utilization_pct is None else f' {g.utilization_pct}%'}" for g in nb.gpus
    )
    return {
        "nb": nb,
        "status": status,
        "resources": f"{nb.gpu} GPU" if nb.gpu else f"{nb.cpu} CPU",
        "gpus": gpus,
        "idle": notebook_text.idle_text(nb.idle) if nb.idle is not None else "",
        "labels": ", ".join(f"{k}={v}" for k, v in sorted(nb.labels.items())),
        "may_start": nb.state in STARTABLE,
        "may_stop": nb.state in STOPPABLE,
        "may_delete": nb.state not in (S.DELETING, S.DELETED),
        "open": nb.state == S.RUNNING,
    }


async def notebooks(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    states, labels, state, label = _filters(request)
    items = await ctx(request).notebook_views.list(
        who.principal.project, states=states, labels=labels, selector=who.principal.selector
    )
    rows = [_row(nb) for nb in items]
    values = {"rows": rows, "who": who, "refresh_s": REFRESH_S}
    if request.query.get("fragment") == "rows":
        return render(request, "notebook_rows.html", **values)
    return render(
        request,
        "notebooks.html",
        states=STATES,
        state=state,
        label=label,
        signed_in=True,
        **values,
    )


async def notebook(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    context = ctx(request)
    nb = await context.notebook_views.get(
        who.principal.project, request.match_info["id"], who.principal.selector
    )
    values = _notebook_summary(nb, who)
    if request.query.get("fragment") == "summary":
        return render(request, "notebook_summary.html", **values)
    backups = (await context.snapshots.backups(nb.id)).items
    return render(
        request,
        "notebook.html",
        **values,
        refresh_s=REFRESH_S,
        backups=[
            {
                "id": b.id,
                "at": b.created_at,
                "kind": b.kind,
                "files": f"{b.files:,}",
                "size": notebook_text.size(b.logical_bytes),
                "stored": notebook_text.size(b.stored_bytes),
            }
            for b in backups
        ],
        logs=nb.state != S.QUEUED,
        history=list(reversed(nb.history or [])),
        signed_in=True,
    )


def _notebook_summary(nb: wire.Notebook, who: Viewer) -> dict[str, Any]:
    """What a notebook's page shows at its top, and refreshes (``?fragment=summary``)."""
    return {
        "row": _row(nb),
        "nb": nb,
        "who": who,
        "gpus": [notebook_text.notebook_gpu(g) for g in nb.gpus],
        "volumes": [
            f"{v.container}@{v.alias}{'/' + v.prefix if v.prefix else ''}:{v.mount_path}:"
            f"{v.permission}"
            for v in nb.volumes
        ],
        "workspace": (
            f"{notebook_text.size(nb.workspace.logical_bytes)} in {nb.workspace.files:,} files, "
            f"{notebook_text.size(nb.workspace.stored_bytes)} stored"
            if nb.workspace
            else "no backup yet"
        ),
        "idle_timeout": (
            durations.human(nb.idle_timeout_s) if nb.idle_timeout_s is not None else "project's"
        ),
        "started": notebook_text.took(nb.history or [], "RUNNING", "STARTING", "started"),
        "stopped": notebook_text.took(nb.history or [], "STOPPED", "STOPPING", "stopped"),
    }


async def act(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    notebook_id, action = request.match_info["id"], request.match_info["action"]
    service = ctx(request).notebooks
    calls = {"start": service.start, "stop": service.stop, "delete": service.delete}
    if action not in calls:
        raise ApiError("not_found", f"no action {action!r} on notebooks")
    await calls[action](who.principal.project, notebook_id, who.principal.selector)
    if action == "start":
        ctx(request).maintenance.wake()
    back = str((await request.post()).get("back", ""))
    raise see_other(back if back.startswith("/console/") else f"/console/notebooks/{notebook_id}")


async def fork(request: web.Request, who: Viewer) -> web.StreamResponse:
    """A new notebook from one of this one's backups (``nbfleet notebook fork``)."""
    assert who.principal is not None
    form = await request.post()
    raw: dict[str, Any] = {"backup": str(form.get("backup", ""))}
    if str(form.get("name", "")).strip():
        raw["name"] = str(form["name"]).strip()
    body = wire.decode(json.dumps(raw).encode(), wire.NotebookFork)
    nb = await ctx(request).notebooks.fork(
        who.principal.project, request.match_info["id"], body, who.principal.selector
    )
    ctx(request).maintenance.wake()
    raise see_other(f"/console/notebooks/{nb.id}")


async def logs(request: web.Request, who: Viewer) -> web.StreamResponse:
    """The notebook's output: the last lines, or (``follow=1``) followed as it comes."""
    assert who.principal is not None
    context = ctx(request)
    notebook_id = request.match_info["id"]
    host_id, agent_url = await context.notebook_views.log_source(
        who.principal.project, notebook_id, who.principal.selector
    )
    try:
        if request.query.get("follow") == "1":
            return await follow_logs(request, host_id, agent_url, notebook_id, LOG_LINES)
        text = await context.agent_client.logs(host_id, agent_url, notebook_id, LOG_LINES)
    except ApiError as exc:  # shown where the output would be
        text, status = f"(no output: {exc.message})", exc.status
    else:
        status = 200
    return secured(web.Response(text=text, status=status, content_type="text/plain"))


async def open_editor(request: web.Request, who: Viewer) -> web.StreamResponse:
    """The notebook's stable URL, with the editor proxy's own cookie set to the signed-in
    token (as ``?token=`` would, but the token never enters a URL or the browser's history)."""
    assert who.principal is not None
    nb = await ctx(request).notebook_views.get(
        who.principal.project, request.match_info["id"], who.principal.selector
    )
    if nb.state != S.RUNNING or nb.url is None:
        raise ApiError("conflict", f"notebook {nb.name} is {nb.state}; it opens while RUNNING")
    token = request.app[SESSIONS].token(request) or ""
    response = see_other(public_base(request) + nb.url)
    response.set_cookie(
        "nbfleet_token",
        token,
        path=nb.url,
        httponly=True,
        samesite="Lax",
        secure=session.secure(request, public_base(request)),
    )
    raise response
