"""The routing tier: a notebook's stable URL, ``{scheduler}/notebooks/{id}/...``, forwarded to
the agent of the host running the notebook now (by the scheduler replicas, and by
``nbfleet-router``, which outlives them: :mod:`router`), HTTP and WebSocket, so that every
client works at that one URL: browsers, VS Code desktop's Jupyter extension,
``@jupyterlab/services``, ``jupyter_client``, curl. A redirect to the agent's origin (what the
scheduler answered before) loses ``Authorization`` and cookies in HTTP clients and is not
followed at all by WebSocket clients on the handshake.

The scheduler replicas are a tier of their own: they know where every notebook runs (one keyed
read per request) and sit behind the same address as the API. ``nbfleet-router`` is the same
forwarding with the location asked of the scheduler and remembered, so open editors keep
working while no replica answers. Either way the tier is
stateless and authenticates nothing itself: the request goes to the agent as the client sent
it (path and query as sent, ``Authorization``, cookies, ``?token=``), and the agent's proxy
checks the project token and never passes it to the editor. Only the connection-specific
headers are dropped; ``Host`` is kept, so the agent writes redirects and cookies for the
address the client uses, and ``X-Forwarded-For`` gains the client. Bodies stream both ways
unbuffered; WebSocket frames are bridged both ways with their close codes
(:mod:`common.forwarding`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from common.forwarding import (
    MAX_WS_MESSAGE,
    SKIP_AUTO_HEADERS,
    WS_HANDSHAKE,
    bridge,
    end_to_end,
    forwarded_for,
    is_websocket,
    stream_back,
    upstream_session,
    websocket_protocols,
)

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class NotebookForwarder:
    """Forwards one request to ``agent_url`` + the request's own path and query."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = upstream_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self, request: web.Request, notebook: str, agent_url: str
    ) -> web.StreamResponse:
        target = URL(agent_url.rstrip("/") + request.raw_path, encoded=True)
        headers = end_to_end(request.headers, {"expect"})
        forwarded_for(request, headers)
        if is_websocket(request):
            return await self._websocket(request, notebook, target, headers)
        return await self._http_request(request, notebook, target, headers)

    async def _http_request(
        self, request: web.Request, notebook: str, target: URL, headers
    ) -> web.StreamResponse:
        body = _body(request) if request.body_exists else None
        async with contextlib.AsyncExitStack() as stack:
            try:
                upstream = await stack.enter_async_context(
                    self._http().request(
                        request.method,
                        target,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        skip_auto_headers=SKIP_AUTO_HEADERS,
                    )
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return _unreachable(notebook, target, exc)
            return await stream_back(request, upstream, end_to_end(upstream.headers))
        raise AssertionError("unreachable")

    async def _websocket(
        self, request: web.Request, notebook: str, target: URL, headers
    ) -> web.StreamResponse:
        for name in list(headers):
            if name.lower() in WS_HANDSHAKE:
                del headers[name]
        try:
            upstream = await self._http().ws_connect(
                target,
                headers=headers,
                protocols=websocket_protocols(request.headers),
                autoclose=False,
                autoping=True,
                max_msg_size=MAX_WS_MESSAGE,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The agent's refusal (401 no token, 403 another project's, 503 not ready) is the
            # client's answer; its page body is not available from aiohttp here.
            status = exc.status if 400 <= exc.status < 600 else 502
            return web.Response(
                status=status,
                text=f"the notebook's host refused the WebSocket: HTTP {exc.status}\n",
                headers={"Cache-Control": "no-store"},
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _unreachable(notebook, target, exc)
        return await bridge(request, upstream)


def plain_text(status: int, text: str, **headers: str) -> web.Response:
    """An answer of the routing tier itself (a notebook's state, a host or scheduler that does
    not answer), for the person in the browser: plain text, never cached."""
    return web.Response(
        status=status,
        text=text + "\n",
        content_type="text/plain",
        headers={"Cache-Control": "no-store", **headers},
    )


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


def _unreachable(notebook: str, target: URL, exc: BaseException) -> web.Response:
    log.warning(
        "notebook=%s its host did not answer at %s: %r; answered 502",
        notebook,
        target.origin(),
        exc,
    )
    return web.Response(
        status=502,
        text=f"notebook {notebook}: its host did not answer ({type(exc).__name__}); "
        "try again in a few seconds\n",
        headers={"Cache-Control": "no-store", "Retry-After": str(RETRY_AFTER_S)},
    )
