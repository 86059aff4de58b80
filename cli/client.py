"""A small synchronous HTTP client for the scheduler's user and operator API.

Synchronous on purpose: each CLI invocation makes one or two calls, and the standard library's
``urllib`` starts in a few milliseconds where an event loop and a connector would dominate.
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
        config.url = url
    if token:
        config.token = token
    if not config.token:
        raise ConfigError(
            "no token: pass --token, set NBFLEET_TOKEN, or put `token = ...` in "
            f"{path or DEFAULT_CONFIG}"
        )
    return config


class Client:
    def __init__(self, config: ClientConfig, *, timeout_s: float = 60.0) -> None:
        self.base = config.url.rstrip("/")
        self.token = config.token
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | list[tuple[str, str]] | None = None,
    ) -> bytes:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else wire.encode(body)
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc.code, exc.read())
        except urllib.error.URLError as exc:
            raise ApiError(
                "upstream_unavailable", f"cannot reach the scheduler at {self.base}: {exc.reason}"
            )

    def call(self, method: str, path: str, reply: type[T], **kwargs: Any) -> T:
        return msgspec.json.decode(self.request(method, path, **kwargs), type=reply)

    def stream(self, path: str, *, query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """``GET path`` whose body is yielded as it arrives, for as long as the scheduler
        sends it. Connecting and the reply's status line are bounded by ``timeout_s``; after
        that a quiet stream is waited on for ever (a followed log may say nothing for hours)."""
        url = urllib.parse.urlsplit(self.base + path)
        path_qs = url.path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        connection_type = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        conn = connection_type(url.hostname or "", url.port, timeout=self.timeout_s)
        try:
            try:
                conn.request("GET", path_qs, headers={"Authorization": f"Bearer {self.token}"})
                sock = conn.sock  # the response reads from it; conn may let go of it
                resp = conn.getresponse()
            except OSError as exc:
                raise ApiError(
                    "upstream_unavailable", f"cannot reach the scheduler at {self.base}: {exc}"
                )
            if resp.status != 200:
                raise _api_error(resp.status, resp.read())
            if sock is not None:
                sock.settimeout(None)
            while chunk := resp.read1(65536):
                yield chunk
        finally:
            conn.close()


def _api_error(status: int, body: bytes) -> ApiError:
    error = wire.error_from_body(status, body)
    if error is not None:
        return error
    text = body.decode(errors="replace").strip()[:200]
    return ApiError(code_for_status(status), f"HTTP {status}: {text or 'no body'}")
