"""The editor proxy (agent/proxy.py) between a real aiohttp client and an aiohttp test server
standing in for the editor, with the scheduler's authorize call faked."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from agent.client import SchedulerUnavailable
from agent.proxy import COOKIE, EditorProxy
from agent.proxy_access import ActivityMeter, Authorizer
from agent.proxy_paths import (
    Editor,
    editor_path,
    rewrite_location,
    rewrite_set_cookie,
    strip_cookie,
    upstream_path,
    without_query_param,
)
from common import forwarding
from common.states import NotebookState as S
from common.wire import AuthorizeReply, AuthorizeRequest, NotebookActivity
from tests.fakes.inventory import FakeClock

ACCESS = "jupyter-access-token"
GOOD = "nbf_good"
READER = "nbf_reader"
OTHER = "nbf_other_project"


# ---------------------------------------------------------------- the stand-in editor


@dataclass
class EditorServer:
    """An aiohttp app standing in for JupyterLab / VS Code, recording what it was sent."""

    seen: list[web.Request] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    ws_closed_with: list[tuple[int | None, str]] = field(default_factory=list)
    port: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", self.stream)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/notebooks/nb2/ws", self.websocket)
        app.router.add_get("/redirect/{kind}", self.redirect)
        app.router.add_get("/notebooks/nb2/redirect/{kind}", self.redirect)
        app.router.add_get("/cookie", self.cookie)
        app.router.add_get("/gzip", self.gzipped)
        app.router.add_get("/forbidden-ws", self.forbidden)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": {k: v for k, v in request.headers.items()},
                "body": len(body),
            },
            headers={"X-Editor": "yes", "Connection": "keep-alive, X-Private", "X-Private": "1"},
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first chunk\n")
        await self.gate.wait()
        await response.write(b"second chunk\n")
        await response.write_eof()
        return response

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def redirect(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        location = {
            "relative": "/lab/tree?x=1",
            "absolute": f"http://127.0.0.1:{self.port}/lab",
            "public": f"http://{request.host}/lab",
            "elsewhere": "https://example.org/login",
            "nearby": "tree",
            "prefixed": "/notebooks/nb2/lab",
        }[kind]
        raise web.HTTPFound(location)

    async def cookie(self, request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "_xsrf=abc; Path=/; Domain=127.0.0.1; HttpOnly")
        response.headers.add("Set-Cookie", "api=1; Path=/api")
        return response

    async def forbidden(self, request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="origin not allowed")

    async def gzipped(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"squeezed " * 100),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        self.seen.append(request)
        ws = web.WebSocketResponse(protocols=["v1.kernel.websocket.jupyter.org"])
        await ws.prepare(request)
        await ws.send_str("hello from the editor")
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close please":
                    await ws.close(code=4001, message=b"editor says bye")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        self.ws_closed_with.append((ws.close_code, ""))
        return ws


# ---------------------------------------------------------------- the rig


class FakeAuthorize:
    """The scheduler's ``POST /v1/agents/authorize``, in memory."""

    def __init__(self) -> None:
        self.calls: list[AuthorizeRequest] = []
        self.down = False
        self.delay = 0.0

    async def __call__(self, request: AuthorizeRequest) -> AuthorizeReply:
        self.calls.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise SchedulerUnavailable("connection refused")
        if request.token == GOOD:
            return AuthorizeReply(allowed=True, role="operator")
        if request.token == READER:
            return AuthorizeReply(allowed=True, role="read")
        if request.token == OTHER:
            return AuthorizeReply(allowed=False, reason="token of another project")
        return AuthorizeReply(allowed=False, reason="unknown or deleted token")


@dataclass
class Rig:
    client: TestClient
    editor: EditorServer
    editors: dict[str, Editor]
    auth: FakeAuthorize
    clock: FakeClock
    activity: ActivityMeter
    authorizer: Authorizer

    def set(self, notebook: str, **changes) -> None:
        current = self.editors[notebook]
        self.editors[notebook] = Editor(**{**current.__dict__, **changes})

    async def get(self, path: str, **kwargs) -> aiohttp.ClientResponse:
        return await self.client.get(path, allow_redirects=False, **kwargs)


def bearer(token: str = GOOD) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    editor = EditorServer()
    editor_server = TestServer(editor.app(), host="127.0.0.1")
    await editor_server.start_server()
    editor.port = editor_server.port
    editors = {
        # Serves at its root: the proxy strips /notebooks/nb1.
        "nb1": Editor("nb1", S.RUNNING, editor.port, "/", ACCESS, unsecure_http=False),
        # Serves under its base URL (JupyterLab's --ServerApp.base_url).
        "nb2": Editor("nb2", S.RUNNING, editor.port, "/notebooks/nb2/", ACCESS, False),
        "public": Editor("public", S.RUNNING, editor.port, "/", ACCESS, unsecure_http=True),
        "starting": Editor("starting", S.STARTING, None, "/", ACCESS, unsecure_http=False),
    }
    clock = FakeClock()
    auth = FakeAuthorize()
    authorizer = Authorizer(auth, clock=clock)
    activity = ActivityMeter(clock)
    proxy = EditorProxy(editors.get, authorizer, activity)
    app = web.Application()
    proxy.add_routes(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield Rig(client, editor, editors, auth, clock, activity, authorizer)
    await client.close()
    await proxy.close()
    await editor_server.close()


# ---------------------------------------------------------------- who gets in


async def test_unknown_notebook_is_404_and_the_bare_prefix_gains_its_slash(rig: Rig) -> None:
    response = await rig.get("/notebooks/nope/lab", headers=bearer())
    assert response.status == 404
    assert "not served by this host" in await response.text()
    assert rig.auth.calls == []

    response = await rig.get("/notebooks/nb1?x=1")
    assert response.status == 307
    assert response.headers["Location"] == "/notebooks/nb1/?x=1"


async def test_no_token_is_401_saying_how_to_get_in(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb1/lab")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    text = await response.text()
    assert "/notebooks/nb1/?token=" in text and "Authorization: token" in text
    assert response.headers["Content-Type"].startswith("text/plain")

    browser = await rig.get("/notebooks/nb1/lab", headers={"Accept": "text/html,*/*"})
    assert browser.status == 401
    assert browser.headers["Content-Type"].startswith("text/html")
    assert "<h1>Token needed</h1>" in await browser.text()
    assert rig.editor.seen == []


async def test_refused_token_is_403_with_the_schedulers_reason(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb1/lab", headers=bearer(OTHER))
    assert response.status == 403
    assert "token of another project" in await response.text()
    assert rig.auth.calls == [AuthorizeRequest(notebook="nb1", token=OTHER)]
    assert rig.editor.seen == []


async def test_bearer_token_reaches_the_editor_which_never_sees_it(rig: Rig) -> None:
    response = await rig.get(
        "/notebooks/nb1/api/contents/a%20b?x=1&y=a%26b%3Dc",
        headers={
            **bearer(READER),
            "Cookie": f"_xsrf=keep; {COOKIE}=stale-cookie; theme=dark",
            "X-Forwarded-For": "10.0.0.9",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
        },
    )
    assert response.status == 200
    seen = await response.json()
    assert seen["path_qs"] == "/api/contents/a%20b?x=1&y=a%26b%3Dc"  # prefix stripped only
    headers = seen["headers"]
    assert headers["Authorization"] == f"token {ACCESS}"
    assert headers["Cookie"] == "_xsrf=keep; theme=dark"
    assert headers["X-Forwarded-For"] == "10.0.0.9, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == headers["Host"] == f"127.0.0.1:{rig.client.port}"
    assert headers["X-Forwarded-Prefix"] == "/notebooks/nb1"
    assert "X-Hop" not in headers
    assert READER not in json.dumps(headers)
    # The editor's own hop-by-hop headers stay on its side too.
    assert response.headers["X-Editor"] == "yes" and "X-Private" not in response.headers


async def test_jupyters_token_scheme_is_a_credential_too(rig: Rig) -> None:
    # What VS Code's Jupyter extension and @jupyterlab/services send.
    for scheme in ("token", "Token", "bearer"):
        response = await rig.get(
            "/notebooks/nb1/api/kernels", headers={"Authorization": f"{scheme} {READER}"}
        )
        assert response.status == 200, scheme
        assert (await response.json())["headers"]["Authorization"] == f"token {ACCESS}"
    async with rig.client.ws_connect(
        "/notebooks/nb1/ws", headers={"Authorization": f"token {READER}"}
    ) as ws:
        assert (await ws.receive_str(timeout=5)) == "hello from the editor"
    refused = await rig.get("/notebooks/nb1/api", headers={"Authorization": f"token {OTHER}"})
    assert refused.status == 403


async def test_the_editors_own_token_in_the_header_is_not_a_credential(rig: Rig) -> None:
    # JupyterLab's page sends its server token back as "Authorization: token ...": the
    # browser's cookie is what counts then, and without one the proxy asks for a token.
    own = {"Authorization": f"token {ACCESS}"}
    assert (await rig.get("/notebooks/nb1/api/kernels", headers=own)).status == 401
    with_cookie = {**own, "Cookie": f"{COOKIE}={GOOD}"}
    assert (await rig.get("/notebooks/nb1/api/kernels", headers=with_cookie)).status == 200
    assert [c.token for c in rig.auth.calls] == [GOOD]


async def test_editor_under_its_base_url_gets_the_whole_path(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb2/lab/tree?a=1", headers=bearer())
    seen = await response.json()
    assert seen["path_qs"] == "/notebooks/nb2/lab/tree?a=1"
    assert "X-Forwarded-Prefix" not in seen["headers"]


async def test_query_token_sets_a_cookie_and_redirects_to_the_clean_url(rig: Rig) -> None:
    response = await rig.get(f"/notebooks/nb1/lab?a=1&token={GOOD}&b=%20")
    assert response.status == 303
    assert response.headers["Location"] == "/notebooks/nb1/lab?a=1&b=%20"
    set_cookie = response.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}={GOOD};")
    for attribute in ("HttpOnly", "Path=/notebooks/nb1/", "SameSite=Lax"):
        assert attribute in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP here
    assert rig.editor.seen == []

    followed = await rig.get(
        response.headers["Location"], headers={"Cookie": f"{COOKIE}={GOOD}; _xsrf=x"}
    )
    seen = await followed.json()
    assert followed.status == 200
    assert seen["path_qs"] == "/lab?a=1&b=%20"
    assert seen["headers"]["Cookie"] == "_xsrf=x"
    assert GOOD not in json.dumps(seen)


async def test_query_token_refused_sets_nothing(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb1/?token=nbf_deleted")
    assert response.status == 403
    assert "unknown or deleted token" in await response.text()
    assert "Set-Cookie" not in response.headers


async def test_refused_cookie_is_cleared(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb1/", headers={"Cookie": f"{COOKIE}=nbf_deleted"})
    assert response.status == 403
    cleared = response.headers["Set-Cookie"]
    assert cleared.startswith(f'{COOKIE}="";') and "Path=/notebooks/nb1/" in cleared
    # A refused header token leaves a good cookie alone.
    response = await rig.get(
        "/notebooks/nb1/", headers={**bearer(OTHER), "Cookie": f"{COOKIE}={GOOD}"}
    )
    assert response.status == 403 and "Set-Cookie" not in response.headers


async def test_the_editors_own_token_in_a_url_is_not_a_credential(rig: Rig) -> None:
    # JupyterLab's front end puts its token on WebSocket URLs: the browser's cookie counts,
    # and the editor gets its token in the header the proxy adds.
    cookie = {"Cookie": f"{COOKIE}={GOOD}"}
    response = await rig.get(f"/notebooks/nb1/files/a?token={ACCESS}&x=1", headers=cookie)
    seen = await response.json()
    assert response.status == 200 and seen["path_qs"] == "/files/a?x=1"
    async with rig.client.ws_connect(f"/notebooks/nb1/ws?token={ACCESS}", headers=cookie) as ws:
        assert (await ws.receive_str(timeout=5)) == "hello from the editor"
    assert [c.token for c in rig.auth.calls] == [GOOD]
    assert (await rig.get(f"/notebooks/nb1/files/a?token={ACCESS}")).status == 401


async def test_query_token_on_a_post_is_used_once_and_never_forwarded(rig: Rig) -> None:
    response = await rig.client.post(f"/notebooks/nb1/api/x?token={GOOD}&k=v", data=b"body")
    seen = await response.json()
    assert response.status == 200 and "Set-Cookie" not in response.headers
    assert seen["path_qs"] == "/api/x?k=v" and seen["method"] == "POST" and seen["body"] == 4


async def test_public_notebook_needs_no_token_and_still_hides_credentials(rig: Rig) -> None:
    response = await rig.get("/notebooks/public/lab", headers=bearer(OTHER))
    seen = await response.json()
    assert response.status == 200
    assert seen["headers"]["Authorization"] == f"token {ACCESS}"
    assert rig.auth.calls == []
    # ?token= is the proxy's even here: the clean URL, no cookie.
    response = await rig.get(f"/notebooks/public/lab?token={GOOD}")
    assert response.status == 303 and response.headers["Location"] == "/notebooks/public/lab"
    assert "Set-Cookie" not in response.headers


async def test_not_running_is_503_but_only_after_authentication(rig: Rig) -> None:
    assert (await rig.get("/notebooks/starting/lab")).status == 401
    response = await rig.get("/notebooks/starting/lab", headers=bearer())
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert "STARTING" in await response.text()


async def test_editor_down_is_502(rig: Rig) -> None:
    rig.set("nb1", port=1)  # nothing listens there
    response = await rig.get("/notebooks/nb1/lab", headers=bearer())
    assert response.status == 502
    assert "did not answer" in await response.text()


# ---------------------------------------------------------------- the token cache


async def test_answers_are_cached_briefly_per_notebook_and_token(rig: Rig) -> None:
    for _ in range(3):
        assert (await rig.get("/notebooks/nb1/", headers=bearer())).status == 200
    assert len(rig.auth.calls) == 1
    assert (await rig.get("/notebooks/nb2/", headers=bearer())).status == 200
    assert len(rig.auth.calls) == 2  # another notebook: asked again
    rig.clock.advance(9)
    await rig.get("/notebooks/nb1/", headers=bearer())
    assert len(rig.auth.calls) == 2
    rig.clock.advance(2)  # past 10 s: a deleted token would stop working now
    await rig.get("/notebooks/nb1/", headers=bearer())
    assert len(rig.auth.calls) == 3

    for _ in range(2):
        assert (await rig.get("/notebooks/nb1/", headers=bearer(OTHER))).status == 403
    assert len(rig.auth.calls) == 4
    rig.clock.advance(2.5)  # a refusal is kept for 2 s only
    await rig.get("/notebooks/nb1/", headers=bearer(OTHER))
    assert len(rig.auth.calls) == 5


async def test_concurrent_requests_share_one_question(rig: Rig) -> None:
    rig.auth.delay = 0.05
    responses = await asyncio.gather(
        *(rig.get(f"/notebooks/nb1/r{i}", headers=bearer()) for i in range(5))
    )
    assert [r.status for r in responses] == [200] * 5
    assert len(rig.auth.calls) == 1


async def test_scheduler_unreachable_is_503_and_not_cached(rig: Rig) -> None:
    rig.auth.down = True
    response = await rig.get("/notebooks/nb1/", headers=bearer())
    assert response.status == 503
    assert "cannot be reached" in await response.text()
    rig.auth.down = False
    assert (await rig.get("/notebooks/nb1/", headers=bearer())).status == 200
    assert len(rig.auth.calls) == 2


# ---------------------------------------------------------------- bodies, redirects, cookies


async def test_responses_stream_as_the_editor_writes(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb1/stream", headers=bearer())
    assert response.status == 200
    first = await asyncio.wait_for(response.content.readline(), 5)
    assert first == b"first chunk\n"  # arrived while the editor still holds the rest
    rig.editor.gate.set()
    assert await response.content.read() == b"second chunk\n"


async def test_request_bodies_stream_to_the_editor(rig: Rig) -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 1 << 20):
            yield payload[start : start + (1 << 20)]

    for data, expect100 in ((payload, False), (chunks(), False), (payload, True)):
        response = await rig.client.post(
            "/notebooks/nb1/upload", data=data, headers=bearer(), expect100=expect100
        )
        assert await response.json() == {
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }


async def test_compressed_bodies_pass_through_untouched(rig: Rig) -> None:
    response = await rig.client.get("/notebooks/nb1/gzip", headers=bearer(), auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()) == b"squeezed " * 100


@pytest.mark.parametrize(
    ("notebook", "kind", "location"),
    [
        ("nb1", "relative", "/notebooks/nb1/lab/tree?x=1"),
        ("nb1", "absolute", "/notebooks/nb1/lab"),
        ("nb1", "public", "/notebooks/nb1/lab"),
        ("nb1", "elsewhere", "https://example.org/login"),
        ("nb1", "nearby", "tree"),
        ("nb2", "prefixed", "/notebooks/nb2/lab"),
        ("nb2", "absolute", "/lab"),
    ],
)
async def test_redirects_stay_under_the_prefix(
    rig: Rig, notebook: str, kind: str, location: str
) -> None:
    response = await rig.get(f"/notebooks/{notebook}/redirect/{kind}", headers=bearer())
    assert response.status == 302
    assert response.headers["Location"] == location


async def test_editor_cookies_are_scoped_to_the_notebook(rig: Rig) -> None:
    response = await rig.get("/notebooks/nb1/cookie", headers=bearer())
    cookies = response.headers.getall("Set-Cookie")
    assert cookies == [
        "_xsrf=abc; Path=/notebooks/nb1/; HttpOnly",
        "api=1; Path=/notebooks/nb1/api",
    ]


def test_helpers() -> None:
    assert without_query_param("a=1&token=x&b=2&token=y&tokens=3", "token") == "a=1&b=2&tokens=3"
    assert without_query_param("token=x", "token") == ""
    assert strip_cookie(f"a=1; {COOKIE}=t;b=2", COOKIE) == "a=1; b=2"
    jupyter = Editor("n", S.RUNNING, 9, "/notebooks/n/", "", False)
    root = Editor("n", S.RUNNING, 9, "/", "", False)
    assert upstream_path(jupyter, "/notebooks/n/lab") == "/notebooks/n/lab"
    assert upstream_path(root, "/notebooks/n/") == "/"
    assert rewrite_location("/notebooks/n/x", root, "h") == "/notebooks/n/x"  # already under
    assert rewrite_location("//127.0.0.1:9/x", root, "h") == "/notebooks/n/x"
    assert rewrite_set_cookie("a=b; Path=/", jupyter) == "a=b; Path=/"  # the editor knows
    # Where the readiness probe opens the editor: its url_path under the prefix.
    assert editor_path("/notebooks/n/", "/lab?token=t") == "/notebooks/n/lab?token=t"
    assert editor_path("/notebooks/n/", "/notebooks/n/lab") == "/notebooks/n/lab"


# ---------------------------------------------------------------- WebSockets


async def test_websocket_frames_cross_both_ways_and_the_editors_close_code_arrives(
    rig: Rig,
) -> None:
    async with rig.client.ws_connect(
        "/notebooks/nb1/ws?session=1",
        headers={**bearer(), "Origin": f"http://127.0.0.1:{rig.client.port}"},
        protocols=["v1.kernel.websocket.jupyter.org"],
    ) as ws:
        assert ws.protocol == "v1.kernel.websocket.jupyter.org"
        assert (await ws.receive_str(timeout=5)) == "hello from the editor"
        await ws.send_str("ping")
        assert (await ws.receive_str(timeout=5)) == "echo:ping"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive_bytes(timeout=5)) == b"\x02\x01\x00"
        await ws.send_str("close please")
        closing = await ws.receive(timeout=5)
        assert closing.type == WSMsgType.CLOSE
        assert (closing.data, closing.extra) == (4001, "editor says bye")
    handshake = rig.editor.seen[-1]
    assert handshake.headers["Authorization"] == f"token {ACCESS}"
    assert handshake.headers["Origin"] == f"http://127.0.0.1:{rig.client.port}"
    assert handshake.raw_path == "/ws?session=1"
    assert GOOD not in json.dumps(dict(handshake.headers))
    activity = rig.activity.get("nb1")
    assert activity is not None
    assert activity.bytes_in >= len("ping") + 3 + len("close please")
    assert activity.bytes_out >= len("hello from the editor") + len("echo:ping") + 3


async def test_websocket_closed_by_the_browser_closes_the_editors_side(rig: Rig) -> None:
    ws = await rig.client.ws_connect("/notebooks/nb2/ws", headers=bearer())
    assert (await ws.receive_str(timeout=5)) == "hello from the editor"
    await ws.close(code=4002, message=b"tab closed")

    async def editor_saw_close() -> None:
        while not rig.editor.ws_closed_with:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(editor_saw_close(), 5)
    assert rig.editor.ws_closed_with == [(4002, "")]


async def test_websocket_needs_a_token_too(rig: Rig) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await rig.client.ws_connect("/notebooks/nb1/ws")
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await rig.client.ws_connect("/notebooks/nb1/ws", headers=bearer(OTHER))
    assert refused.value.status == 403
    # A cookie or a one-off ?token= work for a WebSocket (no redirect for a handshake).
    async with rig.client.ws_connect(f"/notebooks/nb1/ws?token={GOOD}") as ws:
        assert (await ws.receive_str(timeout=5)) == "hello from the editor"
    assert rig.editor.seen[-1].raw_path == "/ws"
    async with rig.client.ws_connect("/notebooks/nb1/ws", headers={"Cookie": f"{COOKIE}={GOOD}"}):
        pass


async def test_websocket_the_editor_refuses_is_answered_with_its_status(rig: Rig) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await rig.client.ws_connect("/notebooks/nb1/forbidden-ws", headers=bearer())
    assert refused.value.status == 403
    # The echo route answers 200 without upgrading: the proxy calls that a bad gateway.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await rig.client.ws_connect("/notebooks/nb1/not-a-socket", headers=bearer())
    assert refused.value.status == 502


# ---------------------------------------------------------------- activity


async def test_activity_counts_requests_and_bytes_per_notebook(rig: Rig) -> None:
    assert rig.activity.pending() == []
    rig.clock.advance(5)
    await rig.client.post("/notebooks/nb1/upload", data=b"x" * 1000, headers=bearer())
    first = rig.activity.get("nb1")
    assert first is not None
    assert first.last_activity_at == rig.clock() and first.bytes_in == 1000
    assert first.bytes_out > 0
    # Refused and unauthenticated requests are not activity.
    await rig.get("/notebooks/nb2/", headers=bearer(OTHER))
    await rig.get("/notebooks/nb2/")
    assert [a.notebook for a in rig.activity.pending()] == ["nb1"]


def test_activity_meter_reports_only_new_traffic() -> None:
    clock = FakeClock()
    meter = ActivityMeter(clock)
    meter.record("a", bytes_in=10)
    meter.record("b", bytes_out=5)
    sent = meter.pending()
    assert sent == [
        NotebookActivity("a", clock(), 10, 0),
        NotebookActivity("b", clock(), 0, 5),
    ]
    clock.advance(1)
    meter.record("b", bytes_out=1)  # arrives while the heartbeat is in flight
    meter.acknowledge(sent)
    assert meter.pending() == [NotebookActivity("b", clock(), 0, 6)]  # cumulative
    meter.acknowledge(meter.pending())
    assert meter.pending() == []
    # A failed heartbeat acknowledges nothing: the same items go with the next one.
    meter.record("a")
    assert [a.notebook for a in meter.pending()] == ["a"]
    meter.acknowledge(meter.pending())
    meter.prune(keep={"b"})
    assert meter.get("a") is None and meter.get("b") is not None


async def test_authorizer_errors_are_shared_and_not_cached() -> None:
    calls = 0

    async def ask(request: AuthorizeRequest) -> AuthorizeReply:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise SchedulerUnavailable("down")

    authorizer = Authorizer(ask)
    results = await asyncio.gather(
        *(authorizer.check("nb", "t") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, SchedulerUnavailable) for r in results) and calls == 1
    with pytest.raises(SchedulerUnavailable):
        await authorizer.check("nb", "t")
    assert calls == 2


def test_websocket_keepalive_tolerates_a_client_that_does_not_read_for_a_minute() -> None:
    # aiohttp pings after WS_HEARTBEAT_S of silence and drops a client that has not answered
    # within half of it: that half is how long a client may not read.
    assert forwarding.WS_HEARTBEAT_S / 2 > 60
