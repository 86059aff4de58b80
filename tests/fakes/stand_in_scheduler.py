"""A stand-in scheduler for CLI unit tests: a real HTTP server on loopback that records every
request and answers canned replies, so the CLI's own HTTP client runs unchanged.

:class:`Fleet` adds canned but realistic operator and billing data (projects with quotas,
hosts, usage reports) with a little behaviour: a quota PATCH changes only the fields sent,
cordon/drain/uncordon change a host's state, a usage report follows ``group_by``. Its payloads
are built from ``common.wire`` Structs, so a change to the contract breaks these tests loudly
instead of leaving them to pass against stale JSON.

Besides JSON, a reply may be :class:`Text` (a plain body, as for logs) or :class:`Stream` (a
chunked body sent piece by piece, as for ``logs --follow``), with a hook between pieces so a
test can check what the CLI printed before the next one arrives.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from common import wire
from common.errors import ApiError
from common.http_server import check_json_content_type

NOT_FOUND = (404, {"code": "not_found", "message": "notebook nope does not exist"})

Answer = tuple[int, Any]


@dataclass
class Text:
    """A plain-text reply body."""

    body: str
    content_type: str = "text/plain; charset=utf-8"


@dataclass
class Stream:
    """A chunked reply sent one chunk at a time; ``before(i)`` runs (in the server thread)
    before chunk ``i`` is sent. ``finished`` is set once the last chunk went out."""

    chunks: list[bytes]
    before: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.finished = threading.Event()


#: ``handler(query, body)``: ``query`` as ``parse_qs`` gives it, ``body`` the raw bytes.
Handler = Callable[[dict[str, list[str]], bytes], Answer]


class StandInScheduler:
    """``calls``: ``(method, path with query, Authorization header, body)`` in arrival order.

    ``replies[(method, path without query)]`` is one of: ``(status, json payload)``, answered
    every time; a list of those, answered in turn, the last one repeating (a notebook that
    moves through states while polled); or a :data:`Handler`. Others get 404.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, bytes]] = []
        self.replies: dict[tuple[str, str], Answer | list[Answer] | Handler] = {}
        self.fleet: Fleet | None = None
        self._lock = threading.Lock()
        stand_in = self

        class RequestHandler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stand_in.calls.append(
                    (self.command, self.path, self.headers.get("Authorization"), body)
                )
                url = urlsplit(self.path)
                try:
                    if body:  # as the real scheduler does: a body not declared JSON is a 415
                        check_json_content_type(self.headers.get("Content-Type"))
                except ApiError as exc:
                    status, answer = exc.status, {"code": exc.code, "message": exc.message}
                else:
                    status, answer = stand_in._reply(
                        self.command, url.path, parse_qs(url.query), body
                    )
                if isinstance(answer, Stream):
                    self._stream(status, answer)
                    return
                if isinstance(answer, Text):
                    data, content_type = answer.body.encode(), answer.content_type
                else:
                    data, content_type = json.dumps(answer).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, status: int, stream: Stream) -> None:
                self.protocol_version = "HTTP/1.1"  # chunked transfer needs it
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                for i, chunk in enumerate(stream.chunks):
                    if stream.before is not None:
                        stream.before(i)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
                stream.finished.set()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        # shutdown() waits for the serving loop to look up; the default 0.5 s poll would make
        # every test's teardown take that long.
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def _reply(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        with self._lock:
            reply = self.replies.get((method, path), NOT_FOUND)
            if isinstance(reply, list):
                return reply.pop(0) if len(reply) > 1 else reply[0]
        if callable(reply):
            return reply(query, body)
        return reply

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def serve_fleet(self, now: float | None = None) -> Fleet:
        """Answer the quota, project, host and usage endpoints from a :class:`Fleet`."""
        self.fleet = Fleet(now)
        self.fleet.install(self)
        return self.fleet

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def payload(obj: Any) -> Any:
    """A wire Struct as the JSON value the real scheduler would send."""
    return json.loads(wire.encode(obj))


def error(status: int, code: str, message: str, **detail: Any) -> Answer:
    return status, {"code": code, "message": message, "detail": detail}


# ---------------------------------------------------------------- canned operator data

H100 = "H100"
L4 = "L4"


def _quota(**changes: int) -> wire.Quota:
    base = {"gpus": 4, "cpus": 48, "notebooks": 10, "gpus_per_notebook": 4, "cpus_per_notebook": 12}
    return wire.Quota(**{**base, **changes})


class Fleet:
    """Two projects (``vision`` near its GPU quota with one notebook queued, ``nlp`` idle),
    three hosts (an H100 host offering SSH, a mixed H100/L4 host whose agent reports no disk
    figures, a CPU host that reports no GPUs and whose workspace disk is nearly full),
    usage for ``vision`` over November 2026, and ``vision``'s own tokens (the caller's
    project): created ones are listed and can be deleted, a deleted one is 404."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now
        self.projects = {
            "vision": wire.Project(
                name="vision",
                created_at=1_790_000_000.0,
                quota=_quota(),
                used=wire.QuotaUse(gpus=3, cpus=36, notebooks=2),
                queued=1,
            ),
            "nlp": wire.Project(
                name="nlp",
                created_at=1_791_000_000.0,
                quota=_quota(gpus=8, cpus=96),
                used=wire.QuotaUse(gpus=0, cpus=0, notebooks=0),
            ),
        }
        self.hosts = {
            "gpu-a": wire.Host(
                id="gpu-a",
                state="ready",
                cpus=96,
                cpus_free=72,
                memory_mb=1_048_576,
                gpus=[_gpu("gpu-a", i, H100, "nb-1" if i < 2 else None) for i in range(8)],
                last_heartbeat=self.now - 3,
                agent_url="http://gpu-a:8471",
                registered_at=1_790_000_000.0,
                flavor="h100-1-gpu",
                labels={"rack": "r1"},
                gpu_models=[wire.HostGpuModel(model=H100, total=8, free=6)],
                notebooks=1,
                disk=wire.DiskSpace(free_bytes=1_234_500_000_000, total_bytes=3_840_000_000_000),
                ssh_address="gpu-a.example.com:2222",
            ),
            "gpu-b": wire.Host(
                id="gpu-b",
                state="cordoned",
                cpus=64,
                cpus_free=64,
                memory_mb=524_288,
                gpus=[_gpu("gpu-b", i, H100 if i < 2 else L4) for i in range(4)],
                last_heartbeat=self.now - 125,
                agent_url="http://gpu-b:8471",
                registered_at=1_790_000_000.0,
                flavor="mixed",
                # Free counts only on a ready host.
                gpu_models=[
                    wire.HostGpuModel(model=H100, total=2, free=0),
                    wire.HostGpuModel(model=L4, total=2, free=0),
                ],
                notebooks=2,
            ),
            "cpu-1": wire.Host(
                id="cpu-1",
                state="ready",
                cpus=32,
                cpus_free=28,
                memory_mb=131_072,
                gpus=[],
                last_heartbeat=self.now - 1,
                agent_url="http://cpu-1:8471",
                registered_at=1_790_000_000.0,
                gpu_note="NVML: driver not loaded",
                flavor="ai1-1-cpu",
                disk=wire.DiskSpace(free_bytes=3_200_000_000, total_bytes=500_000_000_000),
                placement_blocked=(
                    "workspace disk nearly full (3.2 GB free of 500.0 GB; 25.0 GB must stay free)"
                ),
            ),
        }
        self.tokens = {
            "tok-1": wire.TokenInfo(
                id="tok-1",
                project="vision",
                role="operator",
                description="ci pipeline",
                label_selector={},
                created_at=1_790_000_000.0,
            ),
            "tok-2": wire.TokenInfo(
                id="tok-2",
                project="vision",
                role="read",
                description="",
                label_selector={"team": "cv"},
                created_at=1_790_100_000.0,
            ),
        }
        self._stand_in: StandInScheduler | None = None

    def install(self, stand_in: StandInScheduler) -> None:
        r = stand_in.replies
        r[("GET", "/v1/quota")] = lambda q, b: (200, payload(self.projects["vision"]))
        r[("GET", "/v1/admin/projects")] = lambda q, b: (
            200,
            payload(wire.ProjectList(items=list(self.projects.values()))),
        )
        for name in [*self.projects, "ghost"]:
            r[("GET", f"/v1/admin/projects/{name}")] = self._project_get(name)
            r[("PATCH", f"/v1/admin/projects/{name}/quota")] = self._quota_patch(name)
        r[("GET", "/v1/admin/hosts")] = lambda q, b: (
            200,
            payload(wire.HostList(items=list(self.hosts.values()))),
        )
        for host in [*self.hosts, "ghost"]:
            for action in ("cordon", "drain", "uncordon"):
                r[("POST", f"/v1/admin/hosts/{host}/{action}")] = self._host_action(host, action)
        r[("GET", "/v1/projects/vision/usage")] = self._usage("vision")
        r[("GET", "/v1/admin/usage")] = self._usage(None)
        r[("POST", "/v1/admin/tokens")] = self._token
        self._stand_in = stand_in
        r[("POST", "/v1/tokens")] = self._project_token
        r[("GET", "/v1/tokens")] = lambda q, b: (
            200,
            payload(wire.TokenList(items=list(self.tokens.values()))),
        )
        for token_id in [*self.tokens, "ghost"]:
            r[("DELETE", f"/v1/tokens/{token_id}")] = self._token_delete(token_id)

    def _project_get(self, name: str) -> Handler:
        def handle(query: dict[str, list[str]], body: bytes) -> Answer:
            if name not in self.projects:
                return error(404, "not_found", f"project {name} does not exist")
            return 200, payload(self.projects[name])

        return handle

    def _quota_patch(self, name: str) -> Handler:
        def handle(query: dict[str, list[str]], body: bytes) -> Answer:
            if name not in self.projects:
                return error(404, "not_found", f"project {name} does not exist")
            try:
                update = wire.decode(body, wire.QuotaUpdate)
            except ApiError as exc:
                return error(400, exc.code, exc.message)
            project = self.projects[name]
            changes = {
                f: v for f in update.__struct_fields__ if (v := getattr(update, f)) is not None
            }
            project.quota = msgspec.structs.replace(project.quota, **changes)
            return 200, payload(project)

        return handle

    def _host_action(self, host_id: str, action: str) -> Handler:
        def handle(query: dict[str, list[str]], body: bytes) -> Answer:
            host = self.hosts.get(host_id)
            if host is None:
                return error(404, "not_found", f"host {host_id} does not exist")
            if action == "uncordon":
                host.state = "ready"
            elif action == "cordon":
                host.state = "cordoned"
            else:
                # Notebooks still on the host keep it draining until they have left.
                host.state = "draining" if host.notebooks else "cordoned"
            return 200, payload(host)

        return handle

    def _token(self, query: dict[str, list[str]], body: bytes) -> Answer:
        create = wire.decode(body, wire.TokenCreate)
        if create.project not in self.projects:
            return error(404, "not_found", f"project {create.project} does not exist")
        created = wire.TokenCreated(
            id="tok-7",
            project=create.project,
            role=create.role,
            token="nbf_3q2m9XkVtY7s",
            label_selector=dict(create.label_selector),
        )
        return 201, payload(created)

    def _project_token(self, query: dict[str, list[str]], body: bytes) -> Answer:
        create = wire.decode(body, wire.ProjectTokenCreate)
        token_id = f"tok-{len(self.tokens) + 1}"
        self.tokens[token_id] = wire.TokenInfo(
            id=token_id,
            project="vision",
            role=create.role,
            description=create.description,
            label_selector=dict(create.label_selector),
            created_at=self.now,
        )
        assert self._stand_in is not None
        self._stand_in.replies[("DELETE", f"/v1/tokens/{token_id}")] = self._token_delete(token_id)
        created = wire.TokenCreated(
            id=token_id,
            project="vision",
            role=create.role,
            token="nbf_Zk4pQ8vN2rT6wY1s",
            label_selector=dict(create.label_selector),
        )
        return 201, payload(created)

    def _token_delete(self, token_id: str) -> Handler:
        def handle(query: dict[str, list[str]], body: bytes) -> Answer:
            token = self.tokens.pop(token_id, None)
            if token is None:
                return error(404, "not_found", f"token {token_id} does not exist")
            return 200, payload(token)

        return handle

    def _usage(self, project: str | None) -> Handler:
        def handle(query: dict[str, list[str]], body: bytes) -> Answer:
            group_by = query.get("group_by", ["project" if project is None else "notebook"])[0]
            if group_by == "label" and not query.get("label_key"):
                return error(400, "invalid_request", "group_by=label needs label_key")
            for bound in ("from", "to"):
                if bound in query and _time(query[bound][0]) is None:
                    return error(
                        400,
                        "invalid_request",
                        f"{bound}={query[bound][0]!r} is neither unix seconds nor ISO 8601",
                    )
            rows = USAGE_ROWS.get(group_by)
            if rows is None:
                return error(400, "invalid_request", f"unknown group_by {group_by!r}")
            only = query.get("project", [None])[0]
            if only is not None and only not in self.projects:
                return error(404, "not_found", f"project {only} does not exist")
            if only is not None and group_by == "project":
                rows = [r for r in rows if r.group == only]
            report = wire.UsageReport(
                start=1_793_491_200.0,  # 2026-11-01T00:00:00Z
                end=1_795_219_200.0,  # 2026-11-21T00:00:00Z
                group_by=group_by,
                items=rows,
                total=_total(rows, "TOTAL"),
            )
            return 200, payload(report)

        return handle


def _time(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _gpu(host: str, index: int, model: str, notebook: str | None = None) -> wire.HostGpu:
    return wire.HostGpu(
        uuid=f"GPU-{host}-{index}",
        model=model,
        index=index,
        memory_total_mb=81_559 if model == H100 else 23_034,
        memory_used_mb=40_000 if notebook else 0,
        utilization_pct=87 if notebook else 0,
        notebook=notebook,
    )


#: The free tier over the canned 20-day period: 10 GB for 480 hours per notebook.
FREE_GB_HOURS = 10 * 480.0


def _row(group: str, minutes: int, gpu: dict[str, int], cpu: int, gb_hours: float) -> wire.UsageRow:
    """One notebook's usage."""
    return wire.UsageRow(
        group=group,
        notebooks=1,
        minutes=minutes,
        gpu_minutes=gpu,
        cpu_minutes=cpu,
        storage_gb_hours=gb_hours,
        billable_storage_gb_hours=max(0.0, gb_hours - FREE_GB_HOURS),
    )


def _total(rows: list[wire.UsageRow], group: str = "") -> wire.UsageRow:
    gpu: dict[str, int] = {}
    for row in rows:
        for model, minutes in row.gpu_minutes.items():
            gpu[model] = gpu.get(model, 0) + minutes
    return wire.UsageRow(
        group=group,
        notebooks=sum(r.notebooks for r in rows),
        minutes=sum(r.minutes for r in rows),
        gpu_minutes=gpu,
        cpu_minutes=sum(r.cpu_minutes for r in rows),
        storage_gb_hours=sum(r.storage_gb_hours for r in rows),
        billable_storage_gb_hours=sum(r.billable_storage_gb_hours for r in rows),
    )


#: Project ``vision``'s notebooks: one H100 for ~21 hours, 2 × L4 for 5 hours, and 4 CPUs for
#: ~67 hours, with their flavor and ``team`` label (nb-3 has none).
NOTEBOOK_USAGE = [
    (_row("nb-1", 1_250, {H100: 1_250}, 0, 9_840.5), "h100-1-gpu", "team=cv"),
    (_row("nb-2", 300, {L4: 600}, 0, 1_200.0), "l4-1-gpu", "team=cv"),
    (_row("nb-3", 4_000, {}, 16_000, 250.25), "ai1-1-cpu", "(no label)"),
]


def _grouped(key) -> list[wire.UsageRow]:
    groups: dict[str, list[wire.UsageRow]] = {}
    for row, *attrs in NOTEBOOK_USAGE:
        groups.setdefault(key(row, *attrs), []).append(row)
    return [_total(rows, group) for group, rows in groups.items()]


#: Usage rows per ``group_by``, every one summed from :data:`NOTEBOOK_USAGE`.
USAGE_ROWS: dict[str, list[wire.UsageRow]] = {
    "notebook": [row for row, *_ in NOTEBOOK_USAGE],
    "flavor": _grouped(lambda row, flavor, label: flavor),
    "label": _grouped(lambda row, flavor, label: label),
    "project": [
        _total([row for row, *_ in NOTEBOOK_USAGE], "vision"),
        _total([], "nlp"),
    ],
}


def cli_against(monkeypatch, tmp_path) -> StandInScheduler:
    """Start a stand-in and point the CLI at it (URL, token, no config file, empty HOME)."""
    stand_in = StandInScheduler()
    monkeypatch.setenv("NBFLEET_URL", stand_in.url)
    monkeypatch.setenv("NBFLEET_TOKEN", "nbf_test")
    monkeypatch.delenv("NBFLEET_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return stand_in
