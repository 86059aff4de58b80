"""A project's own pages in the console: tokens, datastores, usage."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from aiohttp import web

from common import wire
from common.errors import ApiError
from common.usage_text import gpu_models, write_csv
from scheduler import billing
from scheduler.api.context import ctx
from scheduler.api.usage import usage_report
from scheduler.console.run_form import pairs
from scheduler.console.web import (
    Viewer,
    render,
    secured,
    see_other,
)
from scheduler.datastores import DatastoreService


async def tokens(
    request: web.Request,
    who: Viewer,
    created: wire.TokenCreated | None = None,
    status: int = 200,
    error: str = "",
) -> web.StreamResponse:
    assert who.principal is not None
    items = await ctx(request).projects.list_tokens(who.principal)
    return render(
        request,
        "tokens.html",
        status,
        items=items,
        created=created,
        error=error,
        who=who,
        signed_in=True,
    )


async def create_token(request: web.Request, who: Viewer) -> web.StreamResponse:
    """A token of the project, shown once on the page that answers (never stored)."""
    assert who.principal is not None
    form = await request.post()
    raw: dict[str, Any] = {
        "role": str(form.get("role", "read")),
        "description": str(form.get("description", "")).strip(),
    }
    try:
        selector = pairs(str(form.get("label_selector", "")), "label selector")
        raw["label_selector"] = selector
        body = wire.decode(json.dumps(raw).encode(), wire.ProjectTokenCreate)
        created = await ctx(request).projects.create_project_token(who.principal, body)
    except ApiError as exc:
        return await tokens(request, who, status=exc.status, error=exc.message)
    return await tokens(request, who, created=created, status=201)


async def delete_token(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    await ctx(request).projects.delete_token(who.principal, request.match_info["id"])
    raise see_other("/console/tokens")


def _datastores(request: web.Request) -> DatastoreService:
    context = ctx(request)
    return DatastoreService(context.db, context.clock)


async def datastores(
    request: web.Request,
    who: Viewer,
    status: int = 200,
    error: str = "",
    form: dict[str, str] | None = None,
) -> web.StreamResponse:
    assert who.principal is not None
    items = await _datastores(request).list(who.principal.project)
    return render(
        request,
        "datastores.html",
        status,
        items=items,
        error=error,
        form=form or {"alias": "", "endpoint": "", "region": "us-east-1"},
        who=who,
        signed_in=True,
    )


async def create_datastore(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    posted = await request.post()
    form = {f: str(posted.get(f, "")).strip() for f in ("alias", "endpoint", "region")}
    raw = {
        **form,
        "access_key": str(posted.get("access_key", "")),
        "secret_key": str(posted.get("secret_key", "")),
    }
    try:
        body = wire.decode(json.dumps(raw).encode(), wire.DatastoreCreate)
        await _datastores(request).create(who.principal.project, body)
    except ApiError as exc:
        # The keys are never shown back, not even in the form.
        return await datastores(request, who, exc.status, exc.message, form)
    raise see_other("/console/datastores")


async def delete_datastore(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    await _datastores(request).delete(who.principal.project, request.match_info["alias"])
    raise see_other("/console/datastores")


DAY_S = 86400.0
#: Height of the usage chart's tallest bar (SVG units).
CHART_H = 120
GROUPS = ("notebook", "flavor", "label")


def _bars(values: list[float], width: int) -> list[dict[str, float]]:
    top = max(values, default=0) or 1
    return [
        {
            "x": i * width,
            "h": round(CHART_H * v / top, 1),
            "y": round(CHART_H - CHART_H * v / top, 1),
        }
        for i, v in enumerate(values)
    ]


async def usage(request: web.Request, who: Viewer) -> web.StreamResponse:
    """The project's usage over a period (``from``/``to`` as the API takes them; this month by
    default), grouped as asked, with a chart per day and the same report as CSV."""
    assert who.principal is not None
    if who.principal.selector:
        raise ApiError(
            "forbidden", "a token limited by a label selector cannot read the whole project's usage"
        )
    context = ctx(request)
    project = [who.principal.project]
    # The API's own report (the same query parameters, the same checks), then one per day.
    report = await usage_report(request, projects=project, admin=False, default_group="notebook")
    assert isinstance(report, wire.UsageReport)
    start, end, group_by = report.start, report.end, report.group_by
    label_key = request.query.get("label_key") or None
    if request.query.get("format") == "csv":
        out = io.StringIO()
        write_csv(report, out)
        name = f"usage-{who.principal.project}-{_day(start)}-{_day(end)}.csv"
        response = web.Response(text=out.getvalue(), content_type="text/csv")
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return secured(response)
    now = context.clock()
    days = []
    async with context.db.read_offloop() as tx:
        day = start - start % DAY_S
        while day < end and len(days) < 366:
            part = await billing.report(
                tx,
                context.config,
                projects=project,
                start=max(start, day),
                end=min(end, day + DAY_S),
                now=now,
                group_by=group_by,
                label_key=label_key,
            )
            days.append((day, part))
            day += DAY_S
    series = {
        "GPU-minutes": [sum(r.total.gpu_minutes.values()) for _, r in days],
        "CPU-minutes": [r.total.cpu_minutes for _, r in days],
        "Storage GB-hours": [round(r.total.storage_gb_hours, 1) for _, r in days],
    }
    width = max(6, min(40, 720 // max(1, len(days))))
    charts = [
        {
            "name": name,
            "bars": [
                {**bar, "day": _day(day), "value": value}
                for bar, (day, _), value in zip(_bars(values, width), days, values, strict=True)
            ],
            "width": width * len(days),
            "bar": width - 2,
            "total": sum(values),
        }
        for name, values in series.items()
    ]
    return render(
        request,
        "usage.html",
        report=report,
        models=gpu_models(report),
        charts=charts,
        chart_h=CHART_H,
        days=[(_day(d), r.total) for d, r in days],
        groups=GROUPS,
        group_by=group_by,
        label_key=label_key or "",
        start=_day(start),
        end=_day(end) if end % DAY_S == 0 else _day(end + DAY_S),
        query=request.query_string,
        who=who,
        signed_in=True,
    )


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))
