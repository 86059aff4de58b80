"""The console's operator pages (the admin token): hosts (cordon, drain, uncordon) and
projects (quotas, new projects).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from common import durations, wire
from common.errors import ApiError
from scheduler.api.context import ctx
from scheduler.console.web import (
    Viewer,
    render,
    see_other,
)


async def hosts(request: web.Request, who: Viewer) -> web.StreamResponse:
    items = await ctx(request).hosts.list()
    now = ctx(request).clock()
    rows = []
    for host in items:
        models = ", ".join(f"{m.model}: {m.free}/{m.total} free" for m in host.gpu_models)
        busy = [g.utilization_pct for g in host.gpus if g.utilization_pct is not None]
        rows.append(
            {
                "host": host,
                "gpus": models or (host.gpu_note or "none"),
                "utilization": f"{sum(busy) / len(busy):.0f}%" if busy else "-",
                "heartbeat": durations.human(now - host.last_heartbeat) + " ago",
                "may_cordon": host.state == "ready",
                "may_drain": host.state in ("ready", "cordoned"),
                "may_uncordon": host.state in ("cordoned", "draining"),
            }
        )
    return render(request, "hosts.html", rows=rows, who=who, signed_in=True)


QUOTA_FIELDS = (
    ("gpus", "GPUs"),
    ("cpus", "CPUs (CPU notebooks)"),
    ("notebooks", "Notebooks running"),
    ("gpus_per_notebook", "GPUs per notebook"),
    ("cpus_per_notebook", "CPUs per notebook"),
)


async def projects(
    request: web.Request, who: Viewer, status: int = 200, error: str = ""
) -> web.StreamResponse:
    items = await ctx(request).projects.list_projects()
    return render(
        request,
        "projects.html",
        status,
        items=items,
        fields=QUOTA_FIELDS,
        idle={
            p.name: durations.human(p.quota.idle_timeout_s)
            if p.quota and p.quota.idle_timeout_s
            else "off"
            for p in items
        },
        error=error,
        who=who,
        signed_in=True,
    )


async def create_project(request: web.Request, who: Viewer) -> web.StreamResponse:
    form = await request.post()
    try:
        body = wire.decode(
            json.dumps({"name": str(form.get("name", "")).strip()}).encode(), wire.ProjectCreate
        )
        await ctx(request).projects.create_project(body)
    except ApiError as exc:
        return await projects(request, who, exc.status, exc.message)
    raise see_other("/console/projects")


async def set_quota(request: web.Request, who: Viewer) -> web.StreamResponse:
    """Only the limits given change (as ``nbfleet admin project quota``)."""
    form = await request.post()
    raw: dict[str, Any] = {}
    try:
        for field, _ in QUOTA_FIELDS:
            text = str(form.get(field, "")).strip()
            if text:
                try:
                    raw[field] = int(text)
                except ValueError:
                    raise ApiError("invalid_request", f"{field} {text!r} is not a number")
        idle = str(form.get("idle_timeout", "")).strip().lower()
        if idle:
            try:
                raw["idle_timeout_s"] = (
                    0.0 if idle in ("off", "never", "0") else durations.parse(idle)
                )
            except ValueError as exc:
                raise ApiError("invalid_request", f"idle timeout: {exc}")
        body = wire.decode(json.dumps(raw).encode(), wire.QuotaUpdate)
        await ctx(request).projects.set_quota(request.match_info["name"], body)
    except ApiError as exc:
        return await projects(request, who, exc.status, exc.message)
    ctx(request).maintenance.wake()
    raise see_other("/console/projects")


async def host_action(request: web.Request, who: Viewer) -> web.StreamResponse:
    host_id, action = request.match_info["id"], request.match_info["action"]
    service = ctx(request).hosts
    calls = {"cordon": service.cordon, "drain": service.drain, "uncordon": service.uncordon}
    if action not in calls:
        raise ApiError("not_found", f"no action {action!r} on hosts")
    await calls[action](host_id)
    ctx(request).maintenance.wake()
    raise see_other("/console/hosts")
