"""``POST /v1/notebooks/{id}/datasync`` (operator role; ``DatasyncRequest``): a RUNNING
notebook's volumes synced now, relayed from its agent as newline-delimited ``DatasyncEvent``
JSON (progress lines, then one ``DatasyncResult``). Refusals (404, 403, 409 naming the state
or a datasync already running, 400 naming ``$.volume``) are answered before the stream
starts. A reader that leaves ends only the relay: the datasync goes on in the agent. A stream
the agent breaks off ends with a result saying so (``ok`` false)."""

from __future__ import annotations

import logging

import aiohttp
import msgspec
from aiohttp import web

from common import wire
from common.errors import ApiError
from common.http_server import read_json
from scheduler.api.auth import project_principal
from scheduler.api.context import ctx
from scheduler.datasync import DatasyncPlan, DatasyncPlanner

log = logging.getLogger(__name__)

_event = msgspec.json.Decoder(wire.DatasyncEvent)


async def datasync(request: web.Request) -> web.StreamResponse:
    principal = await project_principal(request, operate=True)
    body = await read_json(request, wire.DatasyncRequest)
    notebook_id = request.match_info["id"]
    context = ctx(request)
    plan = await DatasyncPlanner(context.db).plan(
        principal.project, notebook_id, body, principal.selector
    )
    log.info(
        "notebook=%s host=%s datasync %s of %d volume(s) for project %s",
        notebook_id,
        plan.host_id,
        body.direction,
        len(plan.start.volumes),
        principal.project,
    )
    client = context.agent_client
    async with client.datasync(plan.host_id, plan.agent_url, notebook_id, plan.start) as upstream:
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        await _relay(response, upstream, notebook_id, plan)
    return response


async def _relay(
    response: web.StreamResponse,
    upstream: aiohttp.StreamReader,
    notebook_id: str,
    plan: DatasyncPlan,
) -> None:
    """Pass the agent's lines on as they come; the result gets the volumes left out."""
    pending = b""
    broke = ""
    try:
        async for chunk in upstream.iter_any():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    event = _event.decode(line)
                except msgspec.DecodeError as exc:
                    log.warning(
                        "notebook=%s datasync: unreadable line dropped: %s", notebook_id, exc
                    )
                    continue
                if isinstance(event, wire.DatasyncResult):
                    event.volumes.extend(plan.left_out)
                    await response.write(wire.encode(event) + b"\n")
                    await response.write_eof()
                    return
                await response.write(line + b"\n")
        broke = "it ended without a result"
    except ConnectionError:
        log.info("notebook=%s datasync reader left; the datasync goes on", notebook_id)
        return
    except (TimeoutError, aiohttp.ClientError, ApiError) as exc:
        broke = f"{type(exc).__name__}: {exc}"
    log.warning(
        "notebook=%s host=%s datasync stream broke off: %s", notebook_id, plan.host_id, broke
    )
    result = wire.DatasyncResult(
        notebook=notebook_id,
        direction=plan.start.direction,
        ok=False,
        error=(
            f"the datasync stream from host {plan.host_id} broke off ({broke}); the datasync "
            f"may still be running there: `nbfleet notebook get {notebook_id}` shows its "
            "progress"
        ),
    )
    try:
        await response.write(wire.encode(result) + b"\n")
        await response.write_eof()
    except ConnectionError:
        pass
