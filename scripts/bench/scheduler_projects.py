"""scripts/bench-scheduler's projects and their tokens, made through the operator API.

The notebooks go to one project with its quota raised far above what the bench submits
(``PATCH /v1/admin/projects/{name}/quota``), or to ``--projects N`` of them round-robin. A
scheduler that answers that PATCH with 404/405 (older ones) and enforces a smaller quota gets
enough projects to hold every notebook instead, so quotas never decide a placement figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.scheduler_http import Api
from bench.scheduler_server import QUOTA

#: A scheduler without quotas (or one that never says) is treated as unlimited.
UNLIMITED = 10**9


@dataclass(frozen=True)
class Projects:
    """One operator token per project ``bench-0``, ``bench-1``, ... and how room was made."""

    tokens: list[str]
    quota: str


async def make_projects(api: Api, admin: str, wanted: int, notebooks: int) -> Projects:
    """At least ``wanted`` projects, enough to hold ``notebooks`` 1-GPU notebooks, each with an
    operator token. Raises SystemExit when the scheduler refuses any of it."""

    async def call(method: str, path: str, payload: object = None) -> tuple[int, object]:
        return await api.call(method, path, payload, token=admin)

    status, body = await call("POST", "/v1/admin/projects", {"name": "bench-0"})
    if status != 201:
        raise SystemExit(f"bench-scheduler: cannot create a project: HTTP {status} {body}")
    status, body = await call("PATCH", "/v1/admin/projects/bench-0/quota", QUOTA)
    room = UNLIMITED
    if status in (404, 405):
        room = await _project_room(api, admin, "bench-0")
        quota = f"PATCH answered {status}; per-project room {room}"
    elif status >= 300:
        raise SystemExit(f"bench-scheduler: raising the quota failed: HTTP {status} {body}")
    else:
        quota = "raised with PATCH"
    count = max(wanted, math.ceil(notebooks / room))
    for n in range(1, count):
        status, body = await call("POST", "/v1/admin/projects", {"name": f"bench-{n}"})
        if status != 201:
            raise SystemExit(f"bench-scheduler: cannot create a project: HTTP {status} {body}")
    tokens = []
    for n in range(count):
        status, body = await call(
            "POST", "/v1/admin/tokens", {"project": f"bench-{n}", "role": "operator"}
        )
        if status != 201 or not isinstance(body, dict):
            raise SystemExit(f"bench-scheduler: cannot create a token: HTTP {status} {body}")
        tokens.append(body["token"])
    return Projects(tokens=tokens, quota=quota)


async def _project_room(api: Api, admin: str, name: str) -> int:
    """How many 1-GPU notebooks one project may hold, as the scheduler reports it."""
    status, body = await api.call("GET", "/v1/admin/projects", token=admin)
    if status != 200:
        return UNLIMITED
    for project in body.get("items", []):
        quota = project.get("quota") if project.get("name") == name else None
        if quota:
            return max(1, min(quota.get("gpus", UNLIMITED), quota.get("notebooks", UNLIMITED)))
    return UNLIMITED
