"""A stand-in scheduler for CLI unit tests: a real HTTP server on loopback that records every
request and answers canned replies, so the CLI's own HTTP client runs unchanged."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NOT_FOUND = (404, {"code": "not_found", "message": "notebook nope does not exist"})


class StandInScheduler:
    """``calls``: ``(method, path with query, Authorization header, body)`` in arrival order.
    ``replies[(method, path without query)] = (status, json payload)``; others get 404."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, bytes]] = []
        self.replies: dict[tuple[str, str], tuple[int, Any]] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stand_in.calls.append(
                    (self.command, self.path, self.headers.get("Authorization"), body)
                )
                key = (self.command, self.path.split("?")[0])
                status, payload = stand_in.replies.get(key, NOT_FOUND)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def cli_against(monkeypatch, tmp_path) -> StandInScheduler:
    """Start a stand-in and point the CLI at it (URL, token, no config file, empty HOME)."""
    stand_in = StandInScheduler()
    monkeypatch.setenv("NBFLEET_URL", stand_in.url)
    monkeypatch.setenv("NBFLEET_TOKEN", "nbf_test")
    monkeypatch.delenv("NBFLEET_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return stand_in
