"""Scheduler URLs that give no answer, each the way a real failure does, for failover tests.

* :func:`refused_url`: nothing listens there (a replica that is down): connection refused.
* :class:`ProxyWithoutReplicas`: a real HTTP server answering every request as a load balancer
  with no working replica behind it does (HAProxy's 503 page by default; 502 and 504 too),
  counting the requests, so a test sees whether a client came back to it.
* :class:`Silent`: a port that accepts connections (the kernel's backlog) and never answers:
  a hung replica, so the request is sent and its reply times out.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: HAProxy's own page when no server is available: HTML, not the API's ``{"code","message"}``.
PAGES = {
    502: b"<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete "
    b"response.\n</body></html>\n",
    503: b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this "
    b"request.\n</body></html>\n",
    504: b"<html><body><h1>504 Gateway Time-out</h1>\nThe server didn't respond in time.\n"
    b"</body></html>\n",
}


def refused_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class ProxyWithoutReplicas:
    """Answers ``status`` with HAProxy's page to every request; ``hits`` counts them and
    ``nonces`` keeps each request's ``X-Nbfleet-Nonce`` (signed agent requests)."""

    def __init__(self, status: int = 503) -> None:
        self.hits = 0
        self.nonces: list[str] = []
        self._lock = threading.Lock()
        proxy = self
        page = PAGES[status]

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with proxy._lock:
                    proxy.hits += 1
                    if self.headers.get("X-Nbfleet-Nonce"):
                        proxy.nonces.append(self.headers["X-Nbfleet-Nonce"])
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Silent:
    """A listening socket nobody accepts from: connections open, requests go unanswered."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def close(self) -> None:
        self._socket.close()
