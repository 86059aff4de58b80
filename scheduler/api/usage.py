"""``GET /v1/projects/{p}/usage`` and ``GET /v1/admin/usage``: the usage report.

``from`` and ``to`` are unix seconds or ISO 8601 (``2026-11-01``, ``2026-11-01T12:00:00Z``;
UTC when no zone is given); by default the report covers the current UTC month up to now.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from aiohttp import web

from common.errors import ApiError, invalid
from scheduler import billing
from scheduler.api.auth import project_principal
from scheduler.api.context import ctx
from scheduler.api.replies import json_reply


def parse_time(raw: str, name: str) -> float:
    """Unix seconds of ``raw``; a 400 naming ``name`` unless it is a time a date can hold
    (so never NaN or infinite: every later step, down to billing's minute arithmetic, may
    rely on that)."""
    try:
        value = float(raw)
    except ValueError:
        value = _iso_time(raw, name)
    try:
        dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise invalid(
            f"invalid query parameter `{name}`: {raw!r} is not a finite time between the "
            "years 1 and 9999",
            field=name,
        )
    return value


def _iso_time(raw: str, name: str) -> float:
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(
            f"invalid query parameter `{name}`: {raw!r} is neither unix seconds nor an ISO 8601 "
            "date or time (e.g. 2026-11-01 or 2026-11-01T12:00:00Z)",
            field=name,
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def period(request: web.Request, now: float) -> tuple[float, float]:
    raw_from, raw_to = request.query.get("from"), request.query.get("to")
    end = parse_time(raw_to, "to") if raw_to else now
    if raw_from:
        start = parse_time(raw_from, "from")
    else:
        today = dt.datetime.fromtimestamp(now, dt.UTC)
        start = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    if end <= start:
        raise invalid(
            "invalid query parameters `from`/`to`: the period is empty (to must be after from)",
            field="to",
        )
    return start, end


async def usage_report(
    request: web.Request,
    *,
    projects: Iterable[str] | None,
    admin: bool,
    default_group: str,
) -> object:
    context = ctx(request)
    now = context.clock()
    start, end = period(request, now)
    group_by = request.query.get("group_by") or default_group
    label_key = request.query.get("label_key") or None
    billing.check_group(group_by, label_key, admin=admin)
    async with context.db.read_offloop() as tx:
        return await billing.report(
            tx,
            context.config,
            projects=projects,
            start=start,
            end=end,
            now=now,
            group_by=group_by,
            label_key=label_key,
        )


async def project_usage(request: web.Request) -> web.Response:
    principal = await project_principal(request)
    project = request.match_info["project"]
    if project != principal.project:
        raise ApiError(
            "forbidden",
            f"this token belongs to project {principal.project}, not {project}",
            project=project,
        )
    if principal.selector:
        raise ApiError(
            "forbidden",
            "a token limited by a label selector cannot read the whole project's usage",
        )
    return json_reply(
        await usage_report(request, projects=[project], admin=False, default_group="notebook")
    )
