"""The agent's own HTTP server, on ``listen``:

* ``GET /health`` (open);
* ``GET /v1/notebooks/{id}/logs?tail=N[&follow=1]`` (signed by the scheduler with this host's
  secret): the container's output as text; with ``follow=1`` chunked, then what it writes next,
  until the container stops or the caller goes away. A removed container's kept output is
  answered (never followed);
* ``POST /v1/notebooks/{id}/exec`` (signed; ``ExecRequest`` → ``ExecResult``): a command run
  in the notebook's container as its user, stdout and stderr combined, capped at 1 MiB; past
  its timeout it is killed and answered with exit code 124 and a note. 404 without a
  container, 409 when the container is not running, 415 for a body not declared JSON;
* ``POST /v1/notebooks/{id}/datasync`` (signed; ``DatasyncStart`` → newline-delimited
  ``DatasyncEvent`` JSON): a RUNNING notebook's volumes synced now (:mod:`agent.datasync`);
* ``GET /metrics`` (the metrics token): Prometheus series of the host's GPUs and notebooks
  (:mod:`agent.metrics`);
* ``/notebooks/{id}/...``: the editor proxy (:mod:`agent.proxy`), HTTP and WebSocket.

Errors are answered as ``ErrorBody`` JSON; an unexpected one is logged and answered 500
without internals.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from importlib import metadata

from aiohttp import web

from agent.datasync import Datasyncs
from agent.kept_logs import KeptLogs
from agent.notebook_view import NotebookView
from agent.proxy import EditorProxy
from agent.runtime import ContainerNotRunning, ContainerRuntime, NoSuchContainer
from common import wire
from common.auth import Verifier, token_digest
from common.errors import ApiError
from common.http_server import decode_json, handler_args

log = logging.getLogger(__name__)

MAX_LOG_TAIL = 10000
MAX_EXEC_OUTPUT = 1 << 20
#: How often a followed log checks that its caller is still there (a quiet container writes
#: nothing that would tell).
FOLLOW_CHECK_S = 0.5


def version() -> str:
    """The agent's version, as ``/health`` and its registration report it."""
    try:
        return metadata.version("nbfleet")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class AgentApi:
    def __init__(
        self,
        host_id: str,
        secret: bytes,
        runtime: ContainerRuntime,
        kept_logs: KeptLogs,
        notebooks: NotebookView,
        proxy: EditorProxy,
        metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None,
        metrics_token: str = "",
        datasyncs: Datasyncs | None = None,
    ) -> None:
        self.host_id = host_id
        #: The exposition of :mod:`agent.metrics`, and the token a scrape must bring.
        self.metrics = metrics
        self.metrics_digest = token_digest(metrics_token) if metrics_token else ""
        self.runtime = runtime
        self.kept_logs = kept_logs
        self.notebooks = notebooks
        self.proxy = proxy
        self.datasyncs = datasyncs
        self.verifier = Verifier(lambda host: secret if host == host_id else None)

    def web_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors],
            # Malformed requests: one rate-limited warning, not an ERROR traceback each.
            handler_args=handler_args(f"host={self.host_id} agent"),
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/notebooks/{id}/logs", self._logs)
        app.router.add_post("/v1/notebooks/{id}/exec", self._exec)
        if self.datasyncs is not None:
            app.router.add_post("/v1/notebooks/{id}/datasync", self._datasync)
        app.router.add_get("/metrics", self._metrics)
        self.proxy.add_routes(app)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            body = wire.ErrorBody(code=exc.code, message=exc.message, detail=dict(exc.detail))
            return web.Response(
                status=exc.status, body=wire.encode(body), content_type="application/json"
            )
        except web.HTTPException:
            raise
        except Exception:
            log.exception("host=%s %s %s failed", self.host_id, request.method, request.path)
            body = wire.ErrorBody(code="internal", message="internal error")
            return web.Response(status=500, body=wire.encode(body), content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        body = wire.encode(wire.Health(status="ok", version=version()))
        return web.Response(body=body, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None or not self.metrics_digest:
            raise ApiError("not_found", "metrics are off on this agent: set metrics_token_file")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token_digest(token.strip()), self.metrics_digest
        ):
            raise ApiError("unauthenticated", "this endpoint needs the metrics token")
        body, content_type = await self.metrics()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _logs(self, request: web.Request) -> web.Response:
        self.verifier.verify(
            request.method, request.raw_path, request.headers, await request.read()
        )
        notebook = request.match_info["id"]
        try:
            tail = int(request.query.get("tail", "200"))
        except ValueError:
            raise ApiError("invalid_request", "tail must be an integer", field="tail")
        tail = max(1, min(MAX_LOG_TAIL, tail))
        if request.query.get("follow", "") in ("1", "true"):
            followed = await self._follow_logs(request, notebook, tail)
            if followed is not None:
                return followed
        try:
            text = await self.runtime.logs(notebook, tail)
        except NoSuchContainer:
            text = self._kept_logs(notebook, tail)
        return web.Response(text=text, content_type="text/plain")

    def _kept_logs(self, notebook: str, tail: int) -> str:
        """Stopped or crashed: its last output was kept when the container was removed."""
        kept = self.kept_logs.read(notebook, tail)
        if kept is None:
            raise ApiError(
                "not_found",
                f"notebook {notebook} has no container or kept output on host {self.host_id}",
            )
        return kept

    async def _follow_logs(
        self, request: web.Request, notebook: str, tail: int
    ) -> web.StreamResponse | None:
        """Stream the output until the container stops or the caller leaves; ``None`` when
        there is no container (the caller answers with the kept output instead)."""
        if await self.runtime.inspect(notebook) is None:
            return None
        response = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        stream = self.runtime.follow_logs(notebook, tail)

        async def pump() -> None:
            async for text in stream:
                if text:
                    await response.write(text.encode())

        async def caller_gone() -> None:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(FOLLOW_CHECK_S)

        pumping = asyncio.create_task(pump())
        watching = asyncio.create_task(caller_gone())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                task.cancel()
            await asyncio.gather(pumping, watching, return_exceptions=True)
            await stream.aclose()
        if pumping.done() and not pumping.cancelled() and pumping.exception() is None:
            await response.write_eof()  # the container stopped: a complete answer
        elif request.transport is not None:
            request.transport.close()  # caller gone, or the log stream broke: cut it short
        return response

    async def _exec(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.verifier.verify(request.method, request.raw_path, request.headers, body)
        notebook = request.match_info["id"]
        ask = decode_json(request, body, wire.ExecRequest)
        try:
            result = await self.runtime.exec(
                notebook,
                list(ask.command),
                user=self.notebooks.user(notebook),
                timeout_s=ask.timeout_s,
                max_output=MAX_EXEC_OUTPUT,
            )
        except NoSuchContainer:
            raise ApiError(
                "not_found", f"notebook {notebook} has no container on host {self.host_id}"
            )
        except ContainerNotRunning:
            raise ApiError(
                "conflict", f"notebook {notebook}'s container on host {self.host_id} is not running"
            )
        output = result.output.decode(errors="replace")
        if result.timed_out:
            output += f"\n[nbfleet: timed out after {ask.timeout_s:g}s; the command was killed]\n"
        log.info(
            "notebook=%s exec %r exited %d%s",
            notebook,
            ask.command[0],
            result.exit_code,
            " (timed out)" if result.timed_out else "",
        )
        reply = wire.ExecResult(
            exit_code=124 if result.timed_out else result.exit_code,
            output=output,
            truncated=result.truncated,
        )
        return web.Response(body=wire.encode(reply), content_type="application/json")

    async def _datasync(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.verifier.verify(request.method, request.raw_path, request.headers, body)
        ask = decode_json(request, body, wire.DatasyncStart)
        assert self.datasyncs is not None
        return await self.datasyncs.serve(request, request.match_info["id"], ask)
