"""Forwarding HTTP and WebSockets, as both proxies do: the agent's (browser → editor) and the
scheduler's routing of a notebook's stable URL (any client → the agent that runs it).

* Connection-specific headers (RFC 9110 7.6.1: :data:`HOP_BY_HOP` and those named in
  ``Connection``) are never forwarded either way (:func:`end_to_end`).
* WebSockets: :func:`relay` copies frames one way until the source closes, then closes the sink
  with the same code and reason; two relays bridge a connection. Towards clients, the server
  side pings every :data:`WS_HEARTBEAT_S` and waits half that for the pong, so a client that
  does not read for a minute is not cut off (as tolerant as ``jupyter_server``, whose ping
  timeout is 90 s), and a vanished one is dropped within a few minutes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger(__name__)

#: Largest WebSocket message relayed (Jupyter outputs with images can be large).
MAX_WS_MESSAGE = 128 * 1024 * 1024
#: Pings towards a WebSocket client when it is silent this long; it then has half of it to
#: answer (aiohttp's pong timeout), i.e. 75 s.
WS_HEARTBEAT_S = 150.0

#: RFC 9110 7.6.1 connection-specific headers, never forwarded either way.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
#: Set by aiohttp itself on the upstream WebSocket handshake.
WS_HANDSHAKE = frozenset(
    h.lower()
    for h in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)
#: Close codes that describe a connection, not something a peer may send in a close frame.
UNSENDABLE_CLOSE = frozenset({1005, 1006, 1015})
#: Headers aiohttp would add on its own; the client's (or none) are forwarded instead.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

Headers = CIMultiDictProxy[str] | CIMultiDict[str]
WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


def upstream_session() -> aiohttp.ClientSession:
    """The client a proxy forwards with: bodies passed on as they are (no decompression), no
    cookie jar (cookies are the clients'), no total or read timeout (editors stream kernels,
    terminals and downloads), no connection limit."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        connector=aiohttp.TCPConnector(limit=0),
    )


def connection_tokens(headers: Headers) -> set[str]:
    names = set()
    for value in headers.getall("Connection", []):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def end_to_end(headers: Headers, drop: frozenset[str] | set[str] = frozenset()) -> CIMultiDict[str]:
    """``headers`` without the hop-by-hop ones and without ``drop`` (lower-case names)."""
    dropped = HOP_BY_HOP | connection_tokens(headers) | set(drop)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def is_websocket(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in connection_tokens(request.headers)
    )


def raw_query(request: web.Request) -> str:
    """The query string as sent (``request.query_string`` is decoded)."""
    return request.raw_path.partition("?")[2]


def forwarded_for(request: web.Request, headers: CIMultiDict[str]) -> None:
    """Append the caller to ``X-Forwarded-For``."""
    peer = request.remote or ""
    earlier = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{earlier}, {peer}" if earlier else peer


def websocket_protocols(headers: Headers) -> list[str]:
    """The subprotocols a client offers (``Sec-WebSocket-Protocol``, possibly repeated)."""
    values = headers.getall("Sec-WebSocket-Protocol", [])
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


async def relay(
    source: WebSocket, sink: WebSocket, on_data: Callable[[int], None] | None = None
) -> None:
    """Copy messages from ``source`` to ``sink`` until ``source`` closes, then close ``sink``
    with the same code and reason. ``on_data(n)`` is told each message's payload size."""
    while True:
        msg = await source.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if on_data is not None:
                on_data(len(msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data))
            if sink.closed:
                continue  # its close is under way; drain until the source closes too
            try:
                if msg.type == WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                else:
                    await sink.send_bytes(msg.data)
            except ConnectionError:
                pass  # the sink went away; its own relay closes us
            continue
        # CLOSE (a close frame), CLOSING / CLOSED (we are closing it), ERROR. The other side
        # is closed first: answering a client's close lets it drop the connection, which would
        # cancel the handler before the far side heard the code.
        if msg.type == WSMsgType.CLOSE:
            code, reason = msg.data, msg.extra or ""
        else:
            code, reason = source.close_code, ""
            if code is None or code in UNSENDABLE_CLOSE:
                code = 1001 if msg.type == WSMsgType.ERROR else 1000
        if code is None or code in UNSENDABLE_CLOSE:
            code = 1000
        if not sink.closed:
            await sink.close(code=code, message=reason.encode()[:123])
        if msg.type == WSMsgType.CLOSE:
            await source.close(code=code)
        return


async def stream_back(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    on_data: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with ``upstream``'s status, ``headers`` and body, piece by piece as it
    arrives. When either side goes away
    mid-body the client's connection is closed instead of ending the body: that is how it
    learns the body is incomplete."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await response.prepare(request)
        # iter_any(), not iter_chunks(): on chunked bodies the latter was seen to return an
        # empty end-of-chunk marker over and over without waiting, spinning the event loop.
        async for chunk in upstream.content.iter_any():
            if on_data is not None:
                on_data(len(chunk))
            await response.write(chunk)
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.info("%s cut short: %r", request.path, exc)
        upstream.close()
        if request.transport is not None:
            request.transport.close()
    return response


async def bridge(
    request: web.Request,
    upstream: aiohttp.ClientWebSocketResponse,
    towards_upstream: Callable[[int], None] | None = None,
    towards_client: Callable[[int], None] | None = None,
) -> web.WebSocketResponse:
    """Accept the client's WebSocket (with the subprotocol ``upstream`` agreed on) and relay
    both ways until either side closes; pings a silent client (:data:`WS_HEARTBEAT_S`)."""
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        autoclose=False,
        autoping=True,
        heartbeat=WS_HEARTBEAT_S,
        max_msg_size=MAX_WS_MESSAGE,
    )
    try:
        await client.prepare(request)
        await asyncio.gather(
            relay(client, upstream, towards_upstream), relay(upstream, client, towards_client)
        )
    finally:
        # Reached early only when the client vanished (the handler is cancelled then).
        await upstream.close(code=1001)
        if not client.closed:
            await client.close(code=1001)
    return client
