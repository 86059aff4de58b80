"""Durations as people write and read them: ``90s``, ``60m``, ``1h30m``, ``2d`` in, ``42 min``
out. The CLI's flags (``--idle-timeout 60m``) and the scheduler's messages (``idle for 60 min``)
use these, so what a user types and what they read back agree."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or parts with units (``s``, ``m``, ``h``,
    ``d``) in any order, e.g. ``45s``, ``60m``, ``1h30m``. ``ValueError`` names what is
    wrong."""
    spoken = text.strip().lower()
    try:
        return float(spoken)
    except ValueError:
        pass
    parts = _PART.findall(spoken)
    if not spoken or "".join(n + u for n, u in parts) != spoken.replace(" ", ""):
        raise ValueError(
            f"{text!r} is not a duration: write seconds, or a number with s, m, h or d "
            "(e.g. 90s, 60m, 1h30m)"
        )
    return sum(float(n) * _UNITS[u] for n, u in parts)


def human(seconds: float) -> str:
    """``seconds`` rounded for people: ``45 s``, ``42 min``, ``60 min``, ``2 h 30 min``,
    ``3 days``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes <= 90:
        return f"{minutes} min"
    if seconds < 2 * 86400:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h" + (f" {rest} min" if rest else "")
    days = seconds / 86400
    return f"{days:.0f} days" if days >= 10 else f"{days:.1f} days".replace(".0 ", " ")
