"""The editor proxy: the only way into a notebook's editor (JupyterLab, VS Code, ...).

Mounted on the agent's HTTP server under ``/notebooks/{id}/``; HTTP and WebSocket both. The
editor's port is published on the agent's ``upstream_host`` only (loopback by default), so this
is the only door.

Contract:

* ``/notebooks/{id}`` (no slash) redirects to ``/notebooks/{id}/``. A notebook this host does
  not serve is 404; one that is assigned here but not RUNNING (or whose container is not up) is
  503 with ``Retry-After``. Auth comes first, so a stranger learns nothing about its state.
* Unless the notebook is public (``Assignment.unsecure_http``) a request needs a project token:
  ``Authorization: Bearer <t>`` or ``Authorization: token <t>`` (Jupyter clients' scheme),
  ``?token=<t>`` (on a WebSocket URL too), or the cookie :data:`COOKIE` set by an earlier
  ``?token=<t>`` on a page.
  A GET/HEAD carrying ``?token=`` is answered 303 to the same URL without ``token`` (other query
  parameters kept) with an HttpOnly, SameSite=Lax cookie scoped to ``/notebooks/{id}/``; other
  methods use it for that request only. The ``token`` query parameter is the proxy's: it is
  never forwarded. No token: 401 with a page saying how to authenticate. A token the scheduler
  refuses: 403 with its reason (and the cookie is cleared).
* Tokens are checked by the scheduler (``POST /v1/agents/authorize``, signed); answers are
  cached per (notebook, sha256(token)): allowed for 10 s, refused for 2 s, so a deleted token
  stops working within seconds (:class:`agent.proxy_access.Authorizer`). Concurrent checks of
  one token share one call. A scheduler that cannot answer (unreachable, or 5xx): a token it
  allowed for this notebook within ``authorize_grace_s`` (:class:`agent.proxy_access.Grace`)
  is still admitted, so open editors keep working through a control-plane outage; any other
  token gets 503, as does every token when the scheduler answers 4xx to the agent itself.
  Once it answers again, a revoked token is refused within the allowed cache time. The grace
  is in memory only: an agent restarted during an outage admits nobody until one answers.
* Forwarded to ``<upstream_host>:<published port>``: method, path, query, streamed body,
  headers minus hop-by-hop ones, the nbfleet cookie and any ``Authorization``; plus
  ``X-Forwarded-For``, ``-Proto``, ``-Host`` (the client's ``Host`` is kept, so editors that
  compare ``Origin`` with ``Host`` accept WebSockets), and ``Authorization: token <access
  token>`` so JupyterLab (which is started with ``--ServerApp.token=<access token>``) never
  asks the user for its own token.
* Paths: with ``base_url == "/"`` the editor serves at its root and the ``/notebooks/{id}``
  prefix is stripped (``X-Forwarded-Prefix`` says so); redirects (``Location``) and cookie paths
  from the editor get the prefix back. Otherwise the editor serves under ``base_url`` (e.g.
  JupyterLab's ``--ServerApp.base_url=/notebooks/{id}/``) and the path is forwarded as
  ``base_url`` + the rest, untouched.
* Responses stream back as they come (no buffering); ``Content-Encoding`` passes through.
* WebSockets: the upstream handshake happens first (its refusal is answered with its status),
  then frames are bridged both ways, text and binary, and a close (with its code and reason)
  from either side closes the other.
* Activity: every request and frame stamps the notebook's last activity and adds to its byte
  counters (bodies and frame payloads; in = towards the editor). :class:`ActivityMeter` hands
  the notebooks with new traffic to the heartbeat.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from agent.client import SchedulerUnavailable
from agent.proxy_access import ActivityMeter, Authorizer
from agent.proxy_paths import (
    QUERY_TOKEN,
    UPSTREAM_HOST,
    Editor,
    cookie_value,
    query_param,
    rewrite_location,
    rewrite_set_cookie,
    strip_cookie,
    upstream_authority,
    upstream_path,
    without_query_param,
)
from common import notebook_urls
from common.errors import ApiError
from common.forwarding import (
    MAX_WS_MESSAGE,
    SKIP_AUTO_HEADERS,
    WS_HANDSHAKE,
    bridge,
    end_to_end,
    forwarded_for,
    is_websocket,
    raw_query,
    stream_back,
    upstream_session,
    websocket_protocols,
)

log = logging.getLogger(__name__)

COOKIE = "nbfleet_token"
RETRY_AFTER_S = 5
#: What a token may look like: cookie-safe, so it can be stored as is.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")

Lookup = Callable[[str], Editor | None]


# ---------------------------------------------------------------- pages


def _page(request: web.Request, status: int, title: str, text: str, **headers: str):
    """A small page for people: HTML for browsers, plain text for everything else."""
    accept = request.headers.get("Accept", "")
    if "text/html" in accept:
        body = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
        )
        content_type = "text/html"
    else:
        body = f"{title}\n{text}\n"
        content_type = "text/plain"
    response = web.Response(status=status, text=body, content_type=content_type)
    response.headers.update(headers)
    response.headers["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------- the proxy


class EditorProxy:
    """Serves ``/notebooks/{id}/...``: see the module docstring for the contract.

    ``lookup(notebook)`` says what this host knows of a notebook (``None``: not assigned
    here); ``authorizer`` checks tokens; ``activity`` counts traffic; ``upstream_host`` is
    where editor ports are published (``AgentConfig.upstream_host``).
    """

    def __init__(
        self,
        lookup: Lookup,
        authorizer: Authorizer,
        activity: ActivityMeter,
        *,
        upstream_host: str = UPSTREAM_HOST,
    ) -> None:
        self.lookup = lookup
        self.authorizer = authorizer
        self.activity = activity
        self.upstream_host = upstream_host
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/notebooks/{id}", self._add_slash)
        app.router.add_route("*", "/notebooks/{id}/{tail:.*}", self.handle)

    async def close(self) -> None:
        await self.authorizer.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = upstream_session()
        return self._session

    async def _add_slash(self, request: web.Request) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        raise web.HTTPTemporaryRedirect(path + "/" + ("?" + query if query else ""))

    # ------------------------------------------------------------ entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        notebook = request.match_info["id"]
        editor = self.lookup(notebook)
        if editor is None:
            return _page(
                request,
                404,
                "Notebook not found",
                f"Notebook {notebook} is not served by this host. Use the URL that "
                "`nbfleet notebook get` shows.",
            )
        query_token = query_param(raw_query(request), QUERY_TOKEN)
        if query_token is not None and query_token == editor.access_token:
            # The editor's own token, which JupyterLab's front end may add to its URLs (its
            # WebSockets): not a credential here; the proxy sends it in a header anyway.
            query_token = None
        if query_token is not None and request.method in ("GET", "HEAD"):
            if not is_websocket(request):
                return await self._login(request, editor, query_token)
        if not editor.unsecure_http:
            token = self._credential(request, editor, query_token)
            if token is None:
                return self._unauthenticated(request, editor)
            refusal = await self._authorize(request, editor, token)
            if refusal is not None:
                return refusal
        if not editor.ready:
            return _page(
                request,
                503,
                "Notebook not ready",
                f"Notebook {notebook} is {editor.state} on this host; its editor is not "
                f"answering yet. Try again in a few seconds.",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
        if is_websocket(request):
            return await self._websocket(request, editor)
        return await self._http_request(request, editor)

    def _credential(
        self, request: web.Request, editor: Editor, query_token: str | None
    ) -> str | None:
        """The project token: ``Authorization: Bearer``, or ``token`` (Jupyter's own scheme,
        which VS Code, ``@jupyterlab/services`` and other Jupyter clients send), else
        ``?token=``, else the cookie. The editor's own token, which JupyterLab's page sends
        back in the same header, is no credential here: the cookie is looked at instead."""
        authorization = request.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() in ("bearer", "token") and value and value != editor.access_token:
            return value
        if query_token:
            return query_token
        return cookie_value(request.headers.get("Cookie", ""), COOKIE) or None

    def _unauthenticated(self, request: web.Request, editor: Editor) -> web.StreamResponse:
        here = notebook_urls.editor_path(editor.notebook)
        return _page(
            request,
            401,
            "Token needed",
            f"This notebook needs a project token. Open {here}?token=YOUR_TOKEN once in this "
            "browser (a cookie keeps you signed in), or send the header "
            "'Authorization: token YOUR_TOKEN' (or Bearer), as Jupyter clients do. An "
            "operator of the project creates one with `nbfleet token create --role read`.",
            **{"WWW-Authenticate": 'Bearer realm="nbfleet"'},
        )

    async def _authorize(
        self, request: web.Request, editor: Editor, token: str
    ) -> web.StreamResponse | None:
        """``None`` when ``token`` may open the editor, else the response to send."""
        if not TOKEN_PATTERN.match(token):
            return self._forbidden(request, editor, "the token is malformed", token)
        try:
            reply = await self.authorizer.check(editor.notebook, token)
        except SchedulerUnavailable as exc:
            log.warning(
                "notebook=%s cannot check a token, the scheduler is unreachable (%s) and has "
                "not allowed it here within authorize_grace_s; refusing with 503 until it answers",
                editor.notebook,
                exc,
            )
            return _page(
                request,
                503,
                "Cannot check your token",
                "The nbfleet scheduler cannot be reached to check your token right now. "
                "Try again in a few seconds.",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
        except ApiError as exc:
            log.warning(
                "notebook=%s the scheduler refused to check a token: %s (%s)",
                editor.notebook,
                exc.message,
                exc.code,
            )
            return _page(
                request,
                503,
                "Cannot check your token",
                f"The nbfleet scheduler could not check your token: {exc.message}",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
        if not reply.allowed:
            return self._forbidden(
                request, editor, reply.reason or "the token is not allowed", token
            )
        return None

    def _forbidden(
        self, request: web.Request, editor: Editor, reason: str, token: str
    ) -> web.StreamResponse:
        response = _page(
            request,
            403,
            "Access refused",
            f"This token may not open notebook {editor.notebook}: {reason.rstrip('.')}.",
        )
        if cookie_value(request.headers.get("Cookie", ""), COOKIE) == token:
            response.del_cookie(
                COOKIE, path=notebook_urls.editor_path(editor.notebook)
            )  # stop sending it
        return response

    async def _login(self, request: web.Request, editor: Editor, token: str) -> web.StreamResponse:
        """``?token=``: check it, keep it in a cookie, and send the browser to the clean URL."""
        if not editor.unsecure_http:
            if not token:
                return self._unauthenticated(request, editor)
            refusal = await self._authorize(request, editor, token)
            if refusal is not None:
                return refusal
        path, _, query = request.raw_path.partition("?")
        location = path
        query = without_query_param(query, QUERY_TOKEN)
        if query:
            location += "?" + query
        response = web.Response(status=303, headers={"Location": location})
        response.headers["Cache-Control"] = "no-store"
        if not editor.unsecure_http:
            response.set_cookie(
                COOKIE,
                token,
                path=notebook_urls.editor_path(editor.notebook),
                httponly=True,
                samesite="Lax",
                secure=request.secure,
            )
        return response

    # ------------------------------------------------------------ forwarding

    def _upstream_headers(self, request: web.Request, editor: Editor) -> CIMultiDict[str]:
        # Expect: the browser's 100-continue was answered here; the body streams on its own.
        headers = end_to_end(request.headers, {"authorization", "cookie", "expect"})
        cookies = strip_cookie(request.headers.get("Cookie", ""), COOKIE)
        if cookies:
            headers["Cookie"] = cookies
        if editor.access_token:
            headers["Authorization"] = f"token {editor.access_token}"
        forwarded_for(request, headers)
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        if editor.strips_prefix:
            headers["X-Forwarded-Prefix"] = notebook_urls.editor_path(editor.notebook).rstrip("/")
        return headers

    def _upstream_url(self, request: web.Request, editor: Editor) -> URL:
        path, _, query = request.raw_path.partition("?")
        target = upstream_path(editor, path)
        query = without_query_param(query, QUERY_TOKEN)
        if query:
            target += "?" + query
        authority = upstream_authority(self.upstream_host, editor.port or 0)
        return URL(f"http://{authority}{target}", encoded=True)

    async def _request_body(self, request: web.Request, notebook: str) -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_any():
            self.activity.record(notebook, bytes_in=len(chunk))
            yield chunk

    async def _http_request(self, request: web.Request, editor: Editor) -> web.StreamResponse:
        notebook = editor.notebook
        self.activity.record(notebook)
        headers = self._upstream_headers(request, editor)
        body = self._request_body(request, notebook) if request.body_exists else None
        async with contextlib.AsyncExitStack() as stack:
            try:
                upstream = await stack.enter_async_context(
                    self._http().request(
                        request.method,
                        self._upstream_url(request, editor),
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        skip_auto_headers=SKIP_AUTO_HEADERS,
                    )
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.info("notebook=%s editor did not answer %s: %r", notebook, request.path, exc)
                return _page(
                    request,
                    502,
                    "Editor not answering",
                    f"The editor of notebook {notebook} did not answer ({type(exc).__name__}). "
                    "It may be restarting; try again in a few seconds.",
                    **{"Retry-After": str(RETRY_AFTER_S)},
                )
            return await stream_back(
                request,
                upstream,
                self._response_headers(upstream.headers, request, editor),
                lambda n: self.activity.record(notebook, bytes_out=n),
            )
        raise AssertionError("unreachable")

    def _response_headers(
        self, upstream: CIMultiDictProxy[str], request: web.Request, editor: Editor
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in end_to_end(upstream).items():
            lname = name.lower()
            if lname == "location":
                value = rewrite_location(value, editor, request.host, self.upstream_host)
            elif lname == "set-cookie":
                value = rewrite_set_cookie(value, editor)
            headers.add(name, value)
        return headers

    # ------------------------------------------------------------ WebSockets

    async def _websocket(self, request: web.Request, editor: Editor) -> web.StreamResponse:
        notebook = editor.notebook
        self.activity.record(notebook)
        headers = self._upstream_headers(request, editor)
        for name in list(headers):
            if name.lower() in WS_HANDSHAKE:
                del headers[name]
        protocols = websocket_protocols(request.headers)
        try:
            upstream = await self._http().ws_connect(
                self._upstream_url(request, editor),
                headers=headers,
                protocols=protocols,
                autoclose=False,
                autoping=True,
                max_msg_size=MAX_WS_MESSAGE,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            log.info(
                "notebook=%s editor refused a WebSocket on %s: %s", notebook, request.path, exc
            )
            return _page(
                request,
                exc.status if 400 <= exc.status < 600 else 502,
                "WebSocket refused",
                f"The editor of notebook {notebook} refused the WebSocket: HTTP {exc.status}.",
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("notebook=%s editor did not answer a WebSocket: %r", notebook, exc)
            return _page(
                request,
                502,
                "Editor not answering",
                f"The editor of notebook {notebook} did not answer ({type(exc).__name__}).",
                **{"Retry-After": str(RETRY_AFTER_S)},
            )
        return await bridge(
            request,
            upstream,
            lambda n: self.activity.record(notebook, bytes_in=n),
            lambda n: self.activity.record(notebook, bytes_out=n),
        )
