"""Paths, redirects and cookies of the editor proxy (see :mod:`agent.proxy`): where a request
goes on the editor, and how what the editor answers is made to work under
``/notebooks/{id}/``."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from common import notebook_urls
from common.states import NotebookState

#: Where editors are published unless ``AgentConfig.upstream_host`` says otherwise (loopback:
#: the proxy is the only way in).
UPSTREAM_HOST = "127.0.0.1"
#: The query parameter a token may come in; the proxy's own, never forwarded.
QUERY_TOKEN = "token"


@dataclass(frozen=True)
class Editor:
    """What the proxy needs to know about one notebook assigned to this host."""

    notebook: str
    #: The notebook's state as this agent sees it.
    state: NotebookState
    #: The port the editor is published on (at the agent's ``upstream_host``), while its
    #: container runs.
    port: int | None
    base_url: str
    access_token: str
    unsecure_http: bool

    @property
    def ready(self) -> bool:
        return self.state == NotebookState.RUNNING and self.port is not None

    @property
    def strips_prefix(self) -> bool:
        return self.base_url in ("", "/")


def upstream_authority(upstream_host: str, port: int) -> str:
    """``host:port`` of an editor published on ``upstream_host`` (an IPv6 address bracketed)."""
    if ":" in upstream_host and not upstream_host.startswith("["):
        upstream_host = f"[{upstream_host}]"
    return f"{upstream_host}:{port}"


def editor_path(base_url: str, url_path: str) -> str:
    """The path (and query) to open on the editor itself: ``url_path`` under ``base_url``
    unless it already starts there (the scheduler may fill ``{base_url}`` into it or not)."""
    path = url_path if url_path.startswith("/") else "/" + url_path
    if base_url in ("", "/"):
        return path
    base = "/" + base_url.strip("/")
    if path == base or path.startswith(base + "/") or path.startswith(base + "?"):
        return path
    return base + path


def without_query_param(query_string: str, name: str) -> str:
    """``query_string`` (raw, as sent) without any ``name=...`` pair; the rest byte for byte."""
    kept = [
        part
        for part in query_string.split("&")
        if part and urllib.parse.unquote_plus(part.partition("=")[0]) != name
    ]
    return "&".join(kept)


def query_param(query_string: str, name: str) -> str | None:
    for key, value in urllib.parse.parse_qsl(query_string, keep_blank_values=True):
        if key == name:
            return value
    return None


def upstream_path(editor: Editor, raw_path: str) -> str:
    """The path (and query) to ask the editor for, from the raw request path."""
    prefix = notebook_urls.editor_path(editor.notebook)
    rest = raw_path[len(prefix) :] if raw_path.startswith(prefix) else raw_path.lstrip("/")
    if editor.strips_prefix:
        return "/" + rest
    base = editor.base_url if editor.base_url.endswith("/") else editor.base_url + "/"
    if not base.startswith("/"):
        base = "/" + base
    return base + rest


def rewrite_location(
    value: str, editor: Editor, public_host: str, upstream_host: str = UPSTREAM_HOST
) -> str:
    """A redirect from the editor, made to work under the notebook's prefix. An absolute one
    to the editor's own address (``upstream_host``, or localhost, and its port) or to
    ``public_host`` counts as the editor's."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        ours = {
            upstream_authority(upstream_host, editor.port or 0),
            f"localhost:{editor.port}",
            public_host,
        }
        if parts.netloc not in ours:
            return value  # somewhere else entirely
        parts = parts._replace(scheme="", netloc="")
    if editor.strips_prefix and parts.path.startswith("/"):
        prefix = notebook_urls.editor_path(editor.notebook).rstrip("/")
        if not (parts.path == prefix or parts.path.startswith(prefix + "/")):
            parts = parts._replace(path=prefix + parts.path)
    return urllib.parse.urlunsplit(parts)


def rewrite_set_cookie(value: str, editor: Editor) -> str:
    """An editor's cookie, scoped under the notebook's prefix when the prefix is stripped;
    a ``Domain`` attribute is dropped (the editor does not know the public name)."""
    attributes = value.split(";")
    out = [attributes[0]]
    prefix = notebook_urls.editor_path(editor.notebook).rstrip("/")
    for attribute in attributes[1:]:
        name, eq, arg = attribute.strip().partition("=")
        lname = name.lower()
        if lname == "domain":
            continue
        if lname == "path" and editor.strips_prefix and arg.startswith("/"):
            if not (arg == prefix or arg.startswith(prefix + "/")):
                arg = prefix + arg
            out.append(f" {name}={arg}")
            continue
        out.append(" " + attribute.strip() if attribute.strip() else "")
    return ";".join(part for part in out if part != "")


def strip_cookie(cookie_header: str, name: str) -> str:
    """The ``Cookie`` header without ``name``; the other cookies as they were."""
    kept = [
        part.strip()
        for part in cookie_header.split(";")
        if part.strip() and part.strip().partition("=")[0].strip() != name
    ]
    return "; ".join(kept)


def cookie_value(cookie_header: str, name: str) -> str | None:
    for part in cookie_header.split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == name:
            return value.strip().strip('"')
    return None
