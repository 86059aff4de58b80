"""The stand-in editor of scripts/bench-access: what the agent's proxy forwards to.

The agent of the bench runs it from the catalog's command (bench/access_agent.py), as Docker
would run JupyterLab, with ``{port}``, ``{token}`` and ``{base_url}`` filled in by the
scheduler. Like jupyter_server it serves under its base URL and answers only requests that
carry its own token as ``Authorization: token T`` (the agent's proxy adds it; the bench never
sees it). Under the base URL:

* ``GET small``: a short JSON answer, the size of Jupyter's ``api/status``;
* ``GET large``: ``--large-bytes`` bytes with a ``Content-Length``, written in 1 MiB chunks of
  random data kept in memory (no disk, nothing compressible);
* ``GET ws``: a WebSocket that sends every message back as it came (text or binary).

Anything else under the base URL (the agent's readiness probe) is a small page. The process
exits when its parent (the bench's agent) is gone.

    python -m bench.access_editor --port P --token T --base-url /notebooks/ID/ --large-bytes N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from aiohttp import WSMsgType, web

CHUNK = 1024 * 1024
#: Far above what the bench sends; the proxies' own cap is 128 MiB.
MAX_MESSAGE = 256 * 1024 * 1024
SMALL_BODY = json.dumps(
    {
        "started": "2026-01-01T00:00:00.000000Z",
        "last_activity": "2026-01-01T00:00:00.000000Z",
        "connections": 0,
        "kernels": 0,
    }
).encode()


def editor_app(token: str, base_url: str, large_bytes: int) -> web.Application:
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    block = os.urandom(CHUNK)

    @web.middleware
    async def own_token(request: web.Request, handler):
        if request.headers.get("Authorization") != f"token {token}":
            return web.Response(status=403, text="the editor's own token is missing\n")
        return await handler(request)

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=SMALL_BODY, content_type="application/json")

    async def large(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream"},
        )
        response.content_length = large_bytes
        await response.prepare(request)
        view = memoryview(block)
        left = large_bytes
        while left > 0:
            n = min(left, CHUNK)
            await response.write(view[:n])
            left -= n
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="stand-in editor\n")

    app = web.Application(middlewares=[own_token], client_max_size=MAX_MESSAGE)
    app.router.add_get(base + "small", small)
    app.router.add_get(base + "large", large)
    app.router.add_get(base + "ws", echo)
    app.router.add_get(base + "{tail:.*}", page)
    return app


async def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    os._exit(0)  # orphaned: the bench's agent is gone, and so is the bench


async def _serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(editor_app(args.token, args.base_url, args.large_bytes), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    await _watch_parent(os.getppid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--base-url", default="/")
    parser.add_argument("--large-bytes", type=int, default=CHUNK)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
