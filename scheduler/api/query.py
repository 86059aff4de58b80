"""Query-string parameters, validated with a 400 that names the parameter."""

from __future__ import annotations

from aiohttp import web

from common.errors import invalid


def int_param(
    request: web.Request, name: str, *, default: int | None, low: int, high: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"invalid query parameter `{name}`: {raw!r} is not an integer", field=name)
    if not low <= value <= high:
        raise invalid(
            f"invalid query parameter `{name}`: {value} is not between {low} and {high}",
            field=name,
        )
    return value


def float_param(
    request: web.Request, name: str, *, default: float, low: float, high: float
) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(f"invalid query parameter `{name}`: {raw!r} is not a number", field=name)
    if not low <= value <= high:
        raise invalid(
            f"invalid query parameter `{name}`: {value:g} is not between {low:g} and {high:g}",
            field=name,
        )
    return value
