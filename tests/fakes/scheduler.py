"""A fake scheduler for agent tests.

``FakeSink``: an in-memory ``ReportSink`` (what the Outbox sends to) with ``down_for(n)``;
acknowledged transitions land in ``sent``, usage in ``usage_items``.

``FakeContact``: contact with the scheduler (``agent.contact.Contact``) as a test sets it:
``reachable``, True until the test says otherwise.

``FakeScheduler``: the agent protocol over real HTTP (aiohttp app; run it with
``aiohttp.test_utils.TestServer``), verifying signatures with ``common.auth.Verifier`` and
refusing a body not declared JSON with 415, as the real scheduler does. Tests set
``assignments`` (and call ``bump()``), read ``registrations``, ``heartbeats``, ``transitions``,
``usage`` and ``progress``; ``forget()`` makes the next heartbeat answer ``known=false``.
``POST /v1/agents/authorize`` allows the tokens in ``tokens`` (token → role) for every
notebook, unless ``refusals`` (token → reason) says otherwise; questions land in
``authorizations``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent.client import SchedulerUnavailable
from common import wire
from common.auth import Verifier
from common.errors import ApiError
from common.http_server import check_json_content_type


class FakeSink:
    def __init__(self) -> None:
        #: Transitions acknowledged, in order of arrival.
        self.sent: list[wire.Transition] = []
        self.usage_items: list[wire.UsageItem] = []
        self.snapshots: list[wire.SnapshotReport] = []
        self.progress_reports: list[wire.ProgressReport] = []
        self._down = 0

    def down_for(self, calls: int) -> None:
        self._down = calls

    def _enter(self) -> None:
        if self._down > 0:
            self._down -= 1
            raise SchedulerUnavailable("fake scheduler down")

    async def transitions(self, body: wire.TransitionBatch) -> wire.TransitionReply:
        self._enter()
        self.sent.extend(body.items)
        return wire.TransitionReply(
            items=[wire.TransitionResult(t.notebook, "applied") for t in body.items]
        )

    async def usage(self, body: wire.UsageBatch) -> wire.Ack:
        self._enter()
        self.usage_items.extend(body.items)
        return wire.Ack()

    async def snapshot(self, body: wire.SnapshotReport) -> wire.Ack:
        self._enter()
        self.snapshots.append(body)
        return wire.Ack()

    async def progress(self, body: wire.ProgressReport) -> wire.Ack:
        self._enter()
        self.progress_reports.append(body)
        return wire.Ack()


class FakeContact:
    def __init__(self) -> None:
        self.reachable = True

    def in_contact(self) -> bool:
        return self.reachable


class FakeScheduler:
    def __init__(self, secrets: dict[str, bytes], heartbeat_interval_s: float = 0.2) -> None:
        self.secrets = secrets
        self.heartbeat_interval_s = heartbeat_interval_s
        self.verifier = Verifier(secrets.get)
        self.registrations: list[tuple[str, wire.AgentRegister]] = []
        self.heartbeats: list[tuple[str, wire.Heartbeat]] = []
        self.transitions: list[wire.Transition] = []
        self.usage: list[wire.UsageItem] = []
        self.progress: list[wire.ProgressReport] = []
        self.assignments: list[wire.Assignment] = []
        self.version = 1
        self.known: set[str] = set()
        self.tokens: dict[str, str] = {}
        self.refusals: dict[str, str] = {}
        self.authorizations: list[tuple[str, wire.AuthorizeRequest]] = []
        self._changed = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def forget(self, host: str) -> None:
        self.known.discard(host)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/agents/register", self._register)
        app.router.add_post("/v1/agents/heartbeat", self._heartbeat)
        app.router.add_get("/v1/agents/assignments", self._assignments)
        app.router.add_post("/v1/agents/transitions", self._transitions)
        app.router.add_post("/v1/agents/usage", self._usage)
        app.router.add_post("/v1/agents/progress", self._progress)
        app.router.add_post("/v1/agents/authorize", self._authorize)
        return app

    async def _auth(self, request: web.Request) -> tuple[str, bytes]:
        body = await request.read()
        try:
            host = self.verifier.verify(request.method, request.raw_path, request.headers, body)
            if body:  # as the real scheduler does: a body not declared JSON is a 415
                check_json_content_type(request.headers.get("Content-Type"))
        except ApiError as exc:
            refusal = web.HTTPUnsupportedMediaType if exc.status == 415 else web.HTTPUnauthorized
            raise refusal(
                text=wire.encode(wire.ErrorBody(exc.code, exc.message)).decode(),
                content_type="application/json",
            )
        return host, body

    @staticmethod
    def _json(obj: object) -> web.Response:
        return web.Response(body=wire.encode(obj), content_type="application/json")

    async def _register(self, request: web.Request) -> web.Response:
        host, body = await self._auth(request)
        self.registrations.append((host, wire.decode(body, wire.AgentRegister)))
        self.known.add(host)
        return self._json(wire.RegisterReply(host, self.heartbeat_interval_s))

    async def _heartbeat(self, request: web.Request) -> web.Response:
        host, body = await self._auth(request)
        self.heartbeats.append((host, wire.decode(body, wire.Heartbeat)))
        return self._json(wire.HeartbeatReply(host in self.known, self.heartbeat_interval_s))

    async def _assignments(self, request: web.Request) -> web.Response:
        await self._auth(request)
        since = request.query.get("since")
        wait = min(float(request.query.get("wait", "0")), 30)
        if since is not None and int(since) == self.version:
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except TimeoutError:
                pass
        return self._json(wire.Assignments(self.version, list(self.assignments)))

    async def _transitions(self, request: web.Request) -> web.Response:
        _, body = await self._auth(request)
        batch = wire.decode(body, wire.TransitionBatch)
        self.transitions.extend(batch.items)
        return self._json(
            wire.TransitionReply(
                [wire.TransitionResult(t.notebook, "applied", t.state) for t in batch.items]
            )
        )

    async def _usage(self, request: web.Request) -> web.Response:
        _, body = await self._auth(request)
        self.usage.extend(wire.decode(body, wire.UsageBatch).items)
        return self._json(wire.Ack())

    async def _progress(self, request: web.Request) -> web.Response:
        _, body = await self._auth(request)
        self.progress.append(wire.decode(body, wire.ProgressReport))
        return self._json(wire.Ack())

    async def _authorize(self, request: web.Request) -> web.Response:
        host, body = await self._auth(request)
        ask = wire.decode(body, wire.AuthorizeRequest)
        self.authorizations.append((host, ask))
        if ask.token in self.refusals:
            return self._json(wire.AuthorizeReply(allowed=False, reason=self.refusals[ask.token]))
        role = self.tokens.get(ask.token)
        if role is None:
            return self._json(wire.AuthorizeReply(allowed=False, reason="unknown or deleted token"))
        return self._json(wire.AuthorizeReply(allowed=True, role=role))  # type: ignore[arg-type]
