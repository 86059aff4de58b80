"""Agent protocol handlers: every request is HMAC-signed; the host id comes from the signature."""

from __future__ import annotations

from aiohttp import web

from common import wire
from common.http_server import decode_json
from scheduler import access
from scheduler.agents import DEFAULT_WAIT_S, MAX_WAIT_S
from scheduler.api.auth import is_admin_token, signed_agent
from scheduler.api.context import ctx
from scheduler.api.query import float_param, int_param
from scheduler.api.replies import json_reply


async def register(request: web.Request) -> web.Response:
    host_id, body = await signed_agent(request)
    registration = decode_json(request, body, wire.AgentRegister)
    reply = await ctx(request).agents.register(host_id, registration)
    return json_reply(reply)


async def heartbeat(request: web.Request) -> web.Response:
    host_id, body = await signed_agent(request)
    beat = decode_json(request, body, wire.Heartbeat)
    reply = await ctx(request).agents.heartbeat(host_id, beat)
    return json_reply(reply)


async def assignments(request: web.Request) -> web.Response:
    host_id, _ = await signed_agent(request)
    since = int_param(request, "since", default=None, low=0, high=2**62)
    wait_s = float_param(request, "wait", default=DEFAULT_WAIT_S, low=0, high=MAX_WAIT_S)
    reply = await ctx(request).agents.wait_assignments(host_id, since=since, wait_s=wait_s)
    return json_reply(reply)


async def transitions(request: web.Request) -> web.Response:
    host_id, body = await signed_agent(request)
    batch = decode_json(request, body, wire.TransitionBatch)
    results = await ctx(request).agents.apply_transitions(host_id, batch.items)
    return json_reply(wire.TransitionReply(items=results))


async def usage(request: web.Request) -> web.Response:
    host_id, body = await signed_agent(request)
    batch = decode_json(request, body, wire.UsageBatch)
    await ctx(request).agents.record_usage(host_id, batch.items)
    return json_reply(wire.Ack())


async def snapshots(request: web.Request) -> web.Response:
    host_id, body = await signed_agent(request)
    report = decode_json(request, body, wire.SnapshotReport)
    await ctx(request).snapshots.record(host_id, report)
    return json_reply(wire.Ack())


async def progress(request: web.Request) -> web.Response:
    host_id, body = await signed_agent(request)
    report = decode_json(request, body, wire.ProgressReport)
    await ctx(request).snapshots.report_progress(host_id, report)
    return json_reply(wire.Ack())


async def authorize(request: web.Request) -> web.Response:
    """May this token open this notebook's editor? Asked by the agent's proxy for a token it
    has not seen (recently); the answer names why not, for the person refused."""
    host_id, body = await signed_agent(request)
    ask = decode_json(request, body, wire.AuthorizeRequest)
    context = ctx(request)
    if is_admin_token(request, ask.token):
        return json_reply(access.admin_token_refused())
    principal = await context.projects.principal(ask.token) if ask.token else None
    return json_reply(await access.authorize(context.db, host_id, ask.notebook, principal))
