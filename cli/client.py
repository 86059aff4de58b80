"""A small synchronous HTTP client for the scheduler's user and operator API.

Synchronous on purpose: each CLI invocation makes one or two calls, and the standard library's
``urllib`` starts in a few milliseconds where an event loop and a connector would dominate.

Several scheduler URLs (``--url``, ``NBFLEET_URL``: comma-separated; the config file's ``url``:
a string or a list): a request goes to the URL that answered last in this invocation (at first
the first one given) and, when it gets no answer there, to the next, by the rules of
:mod:`common.failover`. A request that was sent and got no answer is not sent again unless it
is idempotent: ``notebook run`` (a POST) that timed out may have created the notebook, and
another replica would create a second one; the error says so instead. When no URL answers,
the error names each URL tried and what happened there.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from common import wire
from common.config import ClientConfig, ConfigError, load
from common.errors import ApiError, code_for_status
from common.failover import (
    SchedulerUrls,
    Unanswered,
    may_send_again,
    parse_urls,
    proxy_failure,
    proxy_reason,
    tried_text,
)

T = TypeVar("T")

DEFAULT_CONFIG = Path("~/.config/nbfleet/config.toml")


def client_config(url: str | None, token: str | None) -> ClientConfig:
    """Flags win over ``NBFLEET_URL``/``NBFLEET_TOKEN``, which win over the config file
    (``NBFLEET_CONFIG`` or ``~/.config/nbfleet/config.toml``, used only if it exists)."""
    path: Path | None = None
    if os.environ.get("NBFLEET_CONFIG"):
        path = Path(os.environ["NBFLEET_CONFIG"])
    elif DEFAULT_CONFIG.expanduser().exists():
        path = DEFAULT_CONFIG.expanduser()
    config = load(ClientConfig, path, env_prefix="NBFLEET_")
    if url:
        try:
            parse_urls(url, "--url")
        except ValueError as exc:
            raise ConfigError(str(exc))
        config.url = url
    if token:
        config.token = token
    if not config.token:
        raise ConfigError(
            "no token: pass --token, set NBFLEET_TOKEN, or put `token = ...` in "
            f"{path or DEFAULT_CONFIG}"
        )
    return config


#: What failed where: the URLs a request went to without an answer, and why, in order.
Tried = list[tuple[str, str]]


class Client:
    def __init__(self, config: ClientConfig, *, timeout_s: float = 60.0) -> None:
        self.urls = SchedulerUrls(config.url, name="url")
        self.token = config.token
        #: Per URL tried, and per socket operation (connecting, sending, each read).
        self.timeout_s = timeout_s

    @property
    def base(self) -> str:
        """Every scheduler URL, comma-separated: the ``--url`` that reaches the same
        schedulers (``notebook ssh-config`` writes it into ssh's ``ProxyCommand``)."""
        return str(self.urls)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | list[tuple[str, str]] | None = None,
    ) -> bytes:
        path_qs = path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        data = None if body is None else wire.encode(body)
        order = self.urls.in_order()
        tried: Tried = []
        for url in order:
            req = urllib.request.Request(url + path_qs, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self.token}")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as exc:
                payload = exc.read()
                failure = proxy_failure(exc.code, payload)
                if failure is None:
                    self.urls.answered(order[0], url)
                    raise _api_error(exc.code, payload)
                _no_answer(method, path, url, proxy_reason(exc.code), failure, tried)
                continue
            except urllib.error.URLError as exc:
                # urllib wraps what fails while connecting and sending: applied nowhere.
                tried.append((url, str(exc.reason)))
                continue
            except (OSError, http.client.HTTPException) as exc:
                # Sent, and the reply timed out or was cut off.
                why = str(exc) or type(exc).__name__
                _no_answer(method, path, url, why, Unanswered.SENT, tried)
                continue
            self.urls.answered(order[0], url)
            return payload
        raise _unreachable(tried)

    def call(self, method: str, path: str, reply: type[T], **kwargs: Any) -> T:
        return msgspec.json.decode(self.request(method, path, **kwargs), type=reply)

    def stream(
        self,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        method: str = "GET",
        body: Any = None,
    ) -> Iterator[bytes]:
        """``method path`` (GET, or a POST with ``body``) whose reply is yielded as it
        arrives, for as long as the scheduler sends it. Connecting and the reply's status line
        are bounded by ``timeout_s`` (per URL, failing over like :meth:`request`: a POST goes
        to the next URL only when it was not sent); after that a quiet stream is waited on for
        ever (a followed log may say nothing for hours), and a stream cut off is not resumed
        elsewhere: what it printed stays printed."""
        query_text = "?" + urllib.parse.urlencode(query, doseq=True) if query else ""
        data = None if body is None else wire.encode(body)
        order = self.urls.in_order()
        tried: Tried = []
        for url in order:
            target = urllib.parse.urlsplit(url + path)
            connection_type = (
                http.client.HTTPSConnection
                if target.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = connection_type(target.hostname or "", target.port, timeout=self.timeout_s)
            try:
                try:
                    conn.connect()
                except OSError as exc:
                    tried.append((url, str(exc) or type(exc).__name__))  # sent nowhere
                    continue
                try:
                    headers = {"Authorization": f"Bearer {self.token}"}
                    if data is not None:
                        headers["Content-Type"] = "application/json"
                    conn.request(method, target.path + query_text, body=data, headers=headers)
                    sock = conn.sock  # the response reads from it; conn may let go of it
                    resp = conn.getresponse()
                    status = resp.status
                    payload = b"" if status == 200 else resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    why = str(exc) or type(exc).__name__
                    _no_answer(method, path, url, why, Unanswered.SENT, tried)
                    continue
                failure = proxy_failure(status, payload)
                if failure is not None:
                    _no_answer(method, path, url, proxy_reason(status), failure, tried)
                    continue
                self.urls.answered(order[0], url)
                if status != 200:
                    raise _api_error(status, payload)
                if sock is not None:
                    sock.settimeout(None)
                while chunk := resp.read1(65536):
                    yield chunk
                return
            finally:
                conn.close()
        raise _unreachable(tried)


def _no_answer(
    method: str, path: str, url: str, why: str, failure: Unanswered, tried: Tried
) -> None:
    """Note that ``url`` gave no answer, or raise when the request may have been applied there
    and sending it again could apply it twice (:func:`common.failover.may_send_again`)."""
    if not may_send_again(method, failure):
        before = f" (before it, no answer from {tried_text(tried)})" if tried else ""
        raise ApiError(
            "upstream_unavailable",
            f"no reply from the scheduler at {url} to {method} {path} ({why}){before}; it may "
            "have been applied, so it was not sent again: check before trying again",
        )
    tried.append((url, why))


def _unreachable(tried: Tried) -> ApiError:
    if len(tried) == 1:
        [(url, why)] = tried
        return ApiError("upstream_unavailable", f"cannot reach the scheduler at {url}: {why}")
    return ApiError(
        "upstream_unavailable",
        f"cannot reach the scheduler at any of its {len(tried)} URLs: {tried_text(tried)}",
    )


def _api_error(status: int, body: bytes) -> ApiError:
    error = wire.error_from_body(status, body)
    if error is not None:
        return error
    text = body.decode(errors="replace").strip()[:200]
    return ApiError(code_for_status(status), f"HTTP {status}: {text or 'no body'}")
