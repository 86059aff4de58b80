"""The console's pages: server-rendered HTML over the same services the JSON API calls, with
the same checks (a read token may look, an operator token may act, a label-scoped token
reaches only its notebooks, the admin token reaches the operator pages).

Every page answers ``text/html`` with a Content-Security-Policy allowing nothing but this
origin's own scripts, styles and forms (:data:`CSP`), and is never cached. A failure the API
would answer with ``{"code", "message"}`` is a page with the same status and message.
"""

from __future__ import annotations

import hmac
import io
import json
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from common import durations, notebook_text, wire
from common.auth import token_digest
from common.errors import ApiError
from common.states import STARTABLE, STOPPABLE, NotebookState
from common.usage_text import gpu_models, write_csv
from common.volume_spec import VolumeSyntaxError, parse_volume
from scheduler import billing
from scheduler.api.context import ctx
from scheduler.api.editor import public_base
from scheduler.api.usage import period
from scheduler.api.user import follow_logs
from scheduler.console import session
from scheduler.datastores import DatastoreService
from scheduler.notebook_requests import parse_label_selector, parse_states
from scheduler.projects import Principal

S = NotebookState

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATES = [s.value for s in S if s != S.DELETED]
#: The list refreshes itself this often (console.js).
REFRESH_S = 3
#: Lines of a notebook's output its page shows (then follows).
LOG_LINES = 200

SESSIONS: web.AppKey[session.Sessions] = web.AppKey("console_sessions", session.Sessions)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("scheduler.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["isotime"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


@dataclass(frozen=True)
class Viewer:
    """Who is signed in: a project token's principal, or the admin."""

    principal: Principal | None

    @property
    def admin(self) -> bool:
        return self.principal is None

    @property
    def may_operate(self) -> bool:
        return self.principal is not None and self.principal.may_operate


class SignIn(Exception):
    """No valid session: the page asked for is behind the sign-in."""


Page = Callable[[web.Request, Viewer], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------- plumbing


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    response = web.Response(
        status=status,
        text=_templates.get_template(template).render(
            csrf=request.app[SESSIONS].csrf(request), **values
        ),
        content_type="text/html",
    )
    return secured(response)


def secured(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})


async def viewer(request: web.Request) -> Viewer:
    """The signed-in viewer, checked against the tokens now (a deleted token is signed out)."""
    token = request.app[SESSIONS].token(request)
    if token is None:
        raise SignIn()
    context = ctx(request)
    if context.admin_digest and hmac.compare_digest(token_digest(token), context.admin_digest):
        return Viewer(None)
    principal = await context.projects.principal(token)
    if principal is None:
        raise SignIn()
    return Viewer(principal)


def page(handler: Page, *, post: bool = False, admin: bool = False, operate: bool = False):
    """``handler`` behind the sign-in (and, for a post, the CSRF check); an :class:`ApiError`
    becomes an error page with its status and message."""

    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            who = await viewer(request)
            if post:
                form = await request.post()
                if not request.app[SESSIONS].csrf_ok(request, str(form.get("csrf", ""))):
                    raise ApiError(
                        "forbidden",
                        "this form is stale or did not come from the console; reload the page "
                        "and try again",
                    )
            if admin and not who.admin:
                raise ApiError("forbidden", "this page is for operators (the admin token)")
            if not admin and who.admin:
                if request.method == "GET" and request.path.startswith("/console/notebooks"):
                    raise see_other("/console/hosts")
                raise ApiError("forbidden", "the admin token reaches the operator pages only")
            if operate and not who.may_operate:
                raise ApiError(
                    "forbidden",
                    f"a token of role {who.principal.role if who.principal else 'admin'} may "
                    "look, not act; this needs role operator",
                )
            return await handler(request, who)
        except SignIn:
            if request.method == "GET" and request.query.get("fragment") != "rows":
                raise see_other("/console/sign-in")
            return error_page(request, 401, "Signed out", "Your session ended; sign in again.")
        except ApiError as exc:
            return error_page(request, exc.status, "That did not work", exc.message)

    return serve


def error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    signed_in = request.app[SESSIONS].token(request) is not None
    return render(request, "error.html", status, title=title, message=message, signed_in=signed_in)


# ---------------------------------------------------------------- sign in and out


async def index(request: web.Request) -> web.StreamResponse:
    try:
        who = await viewer(request)
    except SignIn:
        raise see_other("/console/sign-in")
    raise see_other("/console/hosts" if who.admin else "/console/notebooks")


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    """The sign-in form; someone signed in already goes where signing in would take them."""
    try:
        who = await viewer(request)
    except SignIn:
        return await _sign_in_page(request, 200, "")
    raise see_other("/console/hosts" if who.admin else "/console/notebooks")


async def _sign_in_page(request: web.Request, status: int, message: str) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    https = session.secure(request, public_base(request))
    response = web.Response(status=status, content_type="text/html")
    basis = session.pre_session(request, response, https=https)
    response.text = _templates.get_template("sign_in.html").render(
        csrf=sessions.csrf_for(basis), message=message, signed_in=False
    )
    return secured(response)


async def sign_in(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    form = await request.post()
    if not sessions.csrf_ok(request, str(form.get("csrf", "")), signing_in=True):
        return await _sign_in_page(
            request, 403, "This form is stale or did not come from the console; try again."
        )
    token = str(form.get("token", "")).strip()
    context = ctx(request)
    admin = bool(context.admin_digest) and hmac.compare_digest(
        token_digest(token), context.admin_digest
    )
    if not token or not (admin or await context.projects.principal(token) is not None):
        return await _sign_in_page(
            request, 401, "That token is not known here: paste a project token or the admin token."
        )
    response = see_other("/console/hosts" if admin else "/console/notebooks")
    session.start(
        response, sessions.seal(token), https=session.secure(request, public_base(request))
    )
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    if request.app[SESSIONS].token(request) is not None and not request.app[SESSIONS].csrf_ok(
        request, str(form.get("csrf", ""))
    ):
        return error_page(request, 403, "That did not work", "This form is stale; reload it.")
    response = see_other("/console/sign-in")
    session.end(response)
    raise response


# ---------------------------------------------------------------- notebooks


def _filters(request: web.Request) -> tuple[set[NotebookState], dict[str, str], str, str]:
    state = request.query.get("state", "")
    label = request.query.get("label", "").strip()
    states = parse_states([state]) if state else set()
    labels = dict([parse_label_selector(label)]) if label else {}
    return states, labels, state, label


def _row(request: web.Request, nb: wire.Notebook) -> dict[str, Any]:
    if nb.progress is not None:
        status = notebook_text.progress(nb.progress)
    elif nb.queue is not None:
        status = notebook_text.queue_text(nb)
    else:
        status = nb.state_reason
    gpus = ", ".join(
        f"{g.model}{'' if g.utilization_pct is None else f' {g.utilization_pct}%'}" for g in nb.gpus
    )
    return {
        "nb": nb,
        "status": status,
        "resources": f"{nb.gpu} GPU" if nb.gpu else f"{nb.cpu} CPU",
        "gpus": gpus,
        "idle": notebook_text.idle_text(nb.idle) if nb.idle is not None else "",
        "labels": ", ".join(f"{k}={v}" for k, v in sorted(nb.labels.items())),
        "may_start": nb.state in STARTABLE,
        "may_stop": nb.state in STOPPABLE,
        "may_delete": nb.state not in (S.DELETING, S.DELETED),
        "open": nb.state == S.RUNNING,
    }


async def notebooks(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    states, labels, state, label = _filters(request)
    items = await ctx(request).notebook_views.list(
        who.principal.project, states=states, labels=labels, selector=who.principal.selector
    )
    rows = [_row(request, nb) for nb in items]
    values = {"rows": rows, "who": who, "refresh_s": REFRESH_S}
    if request.query.get("fragment") == "rows":
        return render(request, "notebook_rows.html", **values)
    return render(
        request,
        "notebooks.html",
        states=STATES,
        state=state,
        label=label,
        signed_in=True,
        **values,
    )


async def notebook(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    context = ctx(request)
    nb = await context.notebook_views.get(
        who.principal.project, request.match_info["id"], who.principal.selector
    )
    values = _notebook_summary(request, nb, who)
    if request.query.get("fragment") == "summary":
        return render(request, "notebook_summary.html", **values)
    backups = (await context.snapshots.backups(nb.id)).items
    return render(
        request,
        "notebook.html",
        **values,
        refresh_s=REFRESH_S,
        backups=[
            {
                "id": b.id,
                "at": b.created_at,
                "kind": b.kind,
                "files": f"{b.files:,}",
                "size": notebook_text.size(b.logical_bytes),
                "stored": notebook_text.size(b.stored_bytes),
            }
            for b in backups
        ],
        logs=nb.state != S.QUEUED,
        history=list(reversed(nb.history or [])),
        signed_in=True,
    )


def _notebook_summary(request: web.Request, nb: wire.Notebook, who: Viewer) -> dict[str, Any]:
    """What a notebook's page shows at its top, and refreshes (``?fragment=summary``)."""
    return {
        "row": _row(request, nb),
        "nb": nb,
        "who": who,
        "gpus": [notebook_text.notebook_gpu(g) for g in nb.gpus],
        "volumes": [
            f"{v.container}@{v.alias}{'/' + v.prefix if v.prefix else ''}:{v.mount_path}:"
            f"{v.permission}"
            for v in nb.volumes
        ],
        "workspace": (
            f"{notebook_text.size(nb.workspace.logical_bytes)} in {nb.workspace.files:,} files, "
            f"{notebook_text.size(nb.workspace.stored_bytes)} stored"
            if nb.workspace
            else "no backup yet"
        ),
        "idle_timeout": (
            durations.human(nb.idle_timeout_s) if nb.idle_timeout_s is not None else "project's"
        ),
        "started": notebook_text.took(nb.history or [], "RUNNING", "STARTING", "started"),
        "stopped": notebook_text.took(nb.history or [], "STOPPED", "STOPPING", "stopped"),
    }


async def act(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    notebook_id, action = request.match_info["id"], request.match_info["action"]
    service = ctx(request).notebooks
    calls = {"start": service.start, "stop": service.stop, "delete": service.delete}
    if action not in calls:
        raise ApiError("not_found", f"no action {action!r} on notebooks")
    await calls[action](who.principal.project, notebook_id, who.principal.selector)
    if action == "start":
        ctx(request).maintenance.wake()
    back = str((await request.post()).get("back", ""))
    raise see_other(back if back.startswith("/console/") else f"/console/notebooks/{notebook_id}")


async def fork(request: web.Request, who: Viewer) -> web.StreamResponse:
    """A new notebook from one of this one's backups (``nbfleet notebook fork``)."""
    assert who.principal is not None
    form = await request.post()
    raw: dict[str, Any] = {"backup": str(form.get("backup", ""))}
    if str(form.get("name", "")).strip():
        raw["name"] = str(form["name"]).strip()
    body = wire.decode(json.dumps(raw).encode(), wire.NotebookFork)
    nb = await ctx(request).notebooks.fork(
        who.principal.project, request.match_info["id"], body, who.principal.selector
    )
    ctx(request).maintenance.wake()
    raise see_other(f"/console/notebooks/{nb.id}")


async def logs(request: web.Request, who: Viewer) -> web.StreamResponse:
    """The notebook's output: the last lines, or (``follow=1``) followed as it comes."""
    assert who.principal is not None
    context = ctx(request)
    notebook_id = request.match_info["id"]
    host_id, agent_url = await context.notebook_views.log_source(
        who.principal.project, notebook_id, who.principal.selector
    )
    try:
        if request.query.get("follow") == "1":
            return await follow_logs(request, host_id, agent_url, notebook_id, LOG_LINES)
        text = await context.agent_client.logs(host_id, agent_url, notebook_id, LOG_LINES)
    except ApiError as exc:  # shown where the output would be
        text, status = f"(no output: {exc.message})", exc.status
    else:
        status = 200
    return secured(web.Response(text=text, status=status, content_type="text/plain"))


async def open_editor(request: web.Request, who: Viewer) -> web.StreamResponse:
    """The notebook's stable URL, with the editor proxy's own cookie set to the signed-in
    token (as ``?token=`` would, but the token never enters a URL or the browser's history)."""
    assert who.principal is not None
    nb = await ctx(request).notebook_views.get(
        who.principal.project, request.match_info["id"], who.principal.selector
    )
    if nb.state != S.RUNNING or nb.url is None:
        raise ApiError("conflict", f"notebook {nb.name} is {nb.state}; it opens while RUNNING")
    token = request.app[SESSIONS].token(request) or ""
    response = see_other(public_base(request) + nb.url)
    response.set_cookie(
        "nbfleet_token",
        token,
        path=nb.url,
        httponly=True,
        samesite="Lax",
        secure=session.secure(request, public_base(request)),
    )
    raise response


# ---------------------------------------------------------------- run a notebook


#: Form fields, in the order `nbfleet notebook run` takes them.
RUN_FIELDS = (
    "framework",
    "editor",
    "flavor",
    "gpu",
    "cpu",
    "name",
    "idle_timeout",
    "labels",
    "envvars",
    "volumes",
    "ssh_public_keys",
    "restart_on_timeout",
    "unsecure_http",
)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _pairs(text: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ApiError("invalid_request", f"{what}: {line!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def run_request(form: dict[str, str]) -> wire.NotebookCreate:
    """The form as the API's request, checked by the API's own decoder (its messages)."""
    body: dict[str, Any] = {
        "framework": form.get("framework", ""),
        "editor": form.get("editor", ""),
    }
    for field in ("gpu", "cpu"):
        text = form.get(field, "").strip()
        if text:
            try:
                body[field] = int(text)
            except ValueError:
                raise ApiError(
                    "invalid_request", f"invalid request: {field} {text!r} is not a number"
                )
    for field in ("flavor", "name"):
        if form.get(field, "").strip():
            body[field] = form[field].strip()
    idle = form.get("idle_timeout", "").strip()
    if idle:
        try:
            body["idle_timeout_s"] = durations.parse(idle)
        except ValueError as exc:
            raise ApiError("invalid_request", f"idle timeout: {exc}")
    body["labels"] = _pairs(form.get("labels", ""), "labels")
    body["envvars"] = _pairs(form.get("envvars", ""), "environment variables")
    volumes = []
    for line in _lines(form.get("volumes", "")):
        try:
            volume = parse_volume(line)
        except VolumeSyntaxError as exc:
            raise ApiError("invalid_request", str(exc).removeprefix("--volume "))
        volumes.append(
            {
                f: getattr(volume, f)
                for f in ("container", "alias", "prefix", "mount_path", "permission")
            }
        )
    body["volumes"] = volumes
    body["ssh_public_keys"] = _lines(form.get("ssh_public_keys", ""))
    body["restart_on_timeout"] = form.get("restart_on_timeout") == "on"
    body["unsecure_http"] = form.get("unsecure_http") == "on"
    return wire.decode(json.dumps(body).encode(), wire.NotebookCreate)


def cli_command(form: dict[str, str]) -> str:
    """The ``nbfleet notebook run`` that asks for what the form does."""
    words = ["nbfleet", "notebook", "run", form.get("framework", ""), form.get("editor", "")]
    for field, flag in (
        ("flavor", "--flavor"),
        ("gpu", "--gpu"),
        ("cpu", "--cpu"),
        ("name", "--name"),
        ("idle_timeout", "--idle-timeout"),
    ):
        if form.get(field, "").strip():
            words += [flag, form[field].strip()]
    for field, flag in (("labels", "--label"), ("envvars", "--envvar"), ("volumes", "--volume")):
        for line in _lines(form.get(field, "")):
            words += [flag, line]
    for _ in _lines(form.get("ssh_public_keys", "")):
        words += ["--ssh-public-keys", "KEY"]
    if form.get("restart_on_timeout") == "on":
        words.append("--restart-on-timeout")
    if form.get("unsecure_http") == "on":
        words.append("--unsecure-http")
    command = " ".join(shlex.quote(w) for w in words if w != "")
    return command.replace("KEY", "~/.ssh/id_ed25519.pub")


async def _defaults(request: web.Request) -> dict[str, str]:
    """A blank form: the catalog's first framework and its first editor, and one GPU if the
    fleet has GPUs, else one CPU (what a first notebook on a CPU-only fleet needs)."""
    context = ctx(request)
    catalog = context.config.catalog
    framework = next(iter(catalog.frameworks), "")
    editors = catalog.frameworks[framework].editors if framework else []
    gpus = any(host.gpus for host in await context.hosts.list())
    return {
        "framework": framework,
        "editor": editors[0] if editors else "",
        **({"gpu": "1"} if gpus else {"cpu": "1"}),
    }


def _form_page(
    request: web.Request, who: Viewer, form: dict[str, str], status: int = 200, error: str = ""
) -> web.Response:
    config = ctx(request).config
    return render(
        request,
        "run.html",
        status,
        form={f: form.get(f, "") for f in RUN_FIELDS},
        error=error,
        command=cli_command(form),
        frameworks=config.catalog.frameworks,
        editors=config.catalog.editors,
        flavors=config.flavors,
        who=who,
        signed_in=True,
    )


async def run_form(request: web.Request, who: Viewer) -> web.StreamResponse:
    asked = {k: v for k, v in request.query.items() if k in RUN_FIELDS}
    if request.query.get("fragment") == "command":
        return secured(web.Response(text=cli_command(asked), content_type="text/plain"))
    return _form_page(request, who, {**await _defaults(request), **asked})


async def run(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    posted = await request.post()
    form = {f: str(posted.get(f, "")) for f in RUN_FIELDS}
    try:
        body = run_request(form)
        nb = await ctx(request).notebooks.create(
            who.principal.project, body, selector=who.principal.selector
        )
    except ApiError as exc:
        return _form_page(request, who, form, exc.status, exc.message)
    raise see_other(f"/console/notebooks/{nb.id}")


# ---------------------------------------------------------------- tokens and datastores


async def tokens(
    request: web.Request,
    who: Viewer,
    created: wire.TokenCreated | None = None,
    status: int = 200,
    error: str = "",
) -> web.StreamResponse:
    assert who.principal is not None
    items = await ctx(request).projects.list_tokens(who.principal)
    return render(
        request,
        "tokens.html",
        status,
        items=items,
        created=created,
        error=error,
        who=who,
        signed_in=True,
    )


async def create_token(request: web.Request, who: Viewer) -> web.StreamResponse:
    """A token of the project, shown once on the page that answers (never stored)."""
    assert who.principal is not None
    form = await request.post()
    raw: dict[str, Any] = {
        "role": str(form.get("role", "read")),
        "description": str(form.get("description", "")).strip(),
    }
    try:
        selector = _pairs(str(form.get("label_selector", "")), "label selector")
        raw["label_selector"] = selector
        body = wire.decode(json.dumps(raw).encode(), wire.ProjectTokenCreate)
        created = await ctx(request).projects.create_project_token(who.principal, body)
    except ApiError as exc:
        return await tokens(request, who, status=exc.status, error=exc.message)
    return await tokens(request, who, created=created, status=201)


async def delete_token(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    await ctx(request).projects.delete_token(who.principal, request.match_info["id"])
    raise see_other("/console/tokens")


def _datastores(request: web.Request) -> DatastoreService:
    context = ctx(request)
    return DatastoreService(context.db, context.clock)


async def datastores(
    request: web.Request,
    who: Viewer,
    status: int = 200,
    error: str = "",
    form: dict[str, str] | None = None,
) -> web.StreamResponse:
    assert who.principal is not None
    items = await _datastores(request).list(who.principal.project)
    return render(
        request,
        "datastores.html",
        status,
        items=items,
        error=error,
        form=form or {"alias": "", "endpoint": "", "region": "us-east-1"},
        who=who,
        signed_in=True,
    )


async def create_datastore(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    posted = await request.post()
    form = {f: str(posted.get(f, "")).strip() for f in ("alias", "endpoint", "region")}
    raw = {
        **form,
        "access_key": str(posted.get("access_key", "")),
        "secret_key": str(posted.get("secret_key", "")),
    }
    try:
        body = wire.decode(json.dumps(raw).encode(), wire.DatastoreCreate)
        await _datastores(request).create(who.principal.project, body)
    except ApiError as exc:
        # The keys are never shown back, not even in the form.
        return await datastores(request, who, exc.status, exc.message, form)
    raise see_other("/console/datastores")


async def delete_datastore(request: web.Request, who: Viewer) -> web.StreamResponse:
    assert who.principal is not None
    await _datastores(request).delete(who.principal.project, request.match_info["alias"])
    raise see_other("/console/datastores")


# ---------------------------------------------------------------- usage

DAY_S = 86400.0
#: Height of the usage chart's tallest bar (SVG units).
CHART_H = 120
GROUPS = ("notebook", "flavor", "label")


def _bars(values: list[float], width: int) -> list[dict[str, float]]:
    top = max(values, default=0) or 1
    return [
        {
            "x": i * width,
            "h": round(CHART_H * v / top, 1),
            "y": round(CHART_H - CHART_H * v / top, 1),
        }
        for i, v in enumerate(values)
    ]


async def usage(request: web.Request, who: Viewer) -> web.StreamResponse:
    """The project's usage over a period (``from``/``to`` as the API takes them; this month by
    default), grouped as asked, with a chart per day and the same report as CSV."""
    assert who.principal is not None
    if who.principal.selector:
        raise ApiError(
            "forbidden", "a token limited by a label selector cannot read the whole project's usage"
        )
    context = ctx(request)
    now = context.clock()
    start, end = period(request, now)
    group_by = request.query.get("group_by") or "notebook"
    label_key = request.query.get("label_key") or None
    billing.check_group(group_by, label_key, admin=False)
    project = [who.principal.project]
    async with context.db.read_offloop() as tx:
        report = await billing.report(
            tx,
            context.config,
            projects=project,
            start=start,
            end=end,
            now=now,
            group_by=group_by,
            label_key=label_key,
        )
        if request.query.get("format") == "csv":
            out = io.StringIO()
            write_csv(report, out)
            name = f"usage-{who.principal.project}-{_day(start)}-{_day(end)}.csv"
            response = web.Response(text=out.getvalue(), content_type="text/csv")
            response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
            return secured(response)
        days = []
        day = start - start % DAY_S
        while day < end and len(days) < 366:
            part = await billing.report(
                tx,
                context.config,
                projects=project,
                start=max(start, day),
                end=min(end, day + DAY_S),
                now=now,
                group_by=group_by,
                label_key=label_key,
            )
            days.append((day, part))
            day += DAY_S
    series = {
        "GPU-minutes": [sum(r.total.gpu_minutes.values()) for _, r in days],
        "CPU-minutes": [r.total.cpu_minutes for _, r in days],
        "Storage GB-hours": [round(r.total.storage_gb_hours, 1) for _, r in days],
    }
    width = max(6, min(40, 720 // max(1, len(days))))
    charts = [
        {
            "name": name,
            "bars": [
                {**bar, "day": _day(day), "value": value}
                for bar, (day, _), value in zip(_bars(values, width), days, values, strict=True)
            ],
            "width": width * len(days),
            "bar": width - 2,
            "total": sum(values),
        }
        for name, values in series.items()
    ]
    return render(
        request,
        "usage.html",
        report=report,
        models=gpu_models(report),
        charts=charts,
        chart_h=CHART_H,
        days=[(_day(d), r.total) for d, r in days],
        groups=GROUPS,
        group_by=group_by,
        label_key=label_key or "",
        start=_day(start),
        end=_day(end) if end % DAY_S == 0 else _day(end + DAY_S),
        query=request.query_string,
        who=who,
        signed_in=True,
    )


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


# ---------------------------------------------------------------- operators


async def hosts(request: web.Request, who: Viewer) -> web.StreamResponse:
    items = await ctx(request).hosts.list()
    now = ctx(request).clock()
    rows = []
    for host in items:
        models = ", ".join(f"{m.model}: {m.free}/{m.total} free" for m in host.gpu_models)
        busy = [g.utilization_pct for g in host.gpus if g.utilization_pct is not None]
        rows.append(
            {
                "host": host,
                "gpus": models or (host.gpu_note or "none"),
                "utilization": f"{sum(busy) / len(busy):.0f}%" if busy else "-",
                "heartbeat": durations.human(now - host.last_heartbeat) + " ago",
                "may_cordon": host.state == "ready",
                "may_drain": host.state in ("ready", "cordoned"),
                "may_uncordon": host.state in ("cordoned", "draining"),
            }
        )
    return render(request, "hosts.html", rows=rows, who=who, signed_in=True)


QUOTA_FIELDS = (
    ("gpus", "GPUs"),
    ("cpus", "CPUs (CPU notebooks)"),
    ("notebooks", "Notebooks running"),
    ("gpus_per_notebook", "GPUs per notebook"),
    ("cpus_per_notebook", "CPUs per notebook"),
)


async def projects(
    request: web.Request, who: Viewer, status: int = 200, error: str = ""
) -> web.StreamResponse:
    items = await ctx(request).projects.list_projects()
    return render(
        request,
        "projects.html",
        status,
        items=items,
        fields=QUOTA_FIELDS,
        idle={
            p.name: durations.human(p.quota.idle_timeout_s)
            if p.quota and p.quota.idle_timeout_s
            else "off"
            for p in items
        },
        error=error,
        who=who,
        signed_in=True,
    )


async def create_project(request: web.Request, who: Viewer) -> web.StreamResponse:
    form = await request.post()
    try:
        body = wire.decode(
            json.dumps({"name": str(form.get("name", "")).strip()}).encode(), wire.ProjectCreate
        )
        await ctx(request).projects.create_project(body)
    except ApiError as exc:
        return await projects(request, who, exc.status, exc.message)
    raise see_other("/console/projects")


async def set_quota(request: web.Request, who: Viewer) -> web.StreamResponse:
    """Only the limits given change (as ``nbfleet admin project quota``)."""
    form = await request.post()
    raw: dict[str, Any] = {}
    try:
        for field, _ in QUOTA_FIELDS:
            text = str(form.get(field, "")).strip()
            if text:
                try:
                    raw[field] = int(text)
                except ValueError:
                    raise ApiError("invalid_request", f"{field} {text!r} is not a number")
        idle = str(form.get("idle_timeout", "")).strip().lower()
        if idle:
            try:
                raw["idle_timeout_s"] = (
                    0.0 if idle in ("off", "never", "0") else durations.parse(idle)
                )
            except ValueError as exc:
                raise ApiError("invalid_request", f"idle timeout: {exc}")
        body = wire.decode(json.dumps(raw).encode(), wire.QuotaUpdate)
        await ctx(request).projects.set_quota(request.match_info["name"], body)
    except ApiError as exc:
        return await projects(request, who, exc.status, exc.message)
    ctx(request).maintenance.wake()
    raise see_other("/console/projects")


async def host_action(request: web.Request, who: Viewer) -> web.StreamResponse:
    host_id, action = request.match_info["id"], request.match_info["action"]
    service = ctx(request).hosts
    calls = {"cordon": service.cordon, "drain": service.drain, "uncordon": service.uncordon}
    if action not in calls:
        raise ApiError("not_found", f"no action {action!r} on hosts")
    await calls[action](host_id)
    ctx(request).maintenance.wake()
    raise see_other("/console/hosts")


# ---------------------------------------------------------------- static files


_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    body = resources.files("scheduler.console").joinpath("static", name).read_bytes()
    response = web.Response(body=body, content_type=_STATIC[name])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def add_console_routes(add_get, add_post) -> None:
    """The console's routes, through the API's guarded ``add_get``/``add_post``."""
    add_get("/console", index)
    add_get("/console/", index)
    add_get("/console/static/{name}", static)
    add_get("/console/sign-in", sign_in_form)
    add_post("/console/sign-in", sign_in)
    add_post("/console/sign-out", sign_out)
    add_get("/console/notebooks", page(notebooks))
    add_get("/console/notebooks/new", page(run_form))
    add_post("/console/notebooks/new", page(run, post=True, operate=True))
    add_get("/console/notebooks/{id}", page(notebook))
    add_get("/console/notebooks/{id}/open", page(open_editor))
    add_get("/console/notebooks/{id}/logs", page(logs))
    add_post("/console/notebooks/{id}/fork", page(fork, post=True, operate=True))
    add_post("/console/notebooks/{id}/{action}", page(act, post=True, operate=True))
    add_get("/console/usage", page(usage))
    add_get("/console/tokens", page(tokens))
    add_post("/console/tokens", page(create_token, post=True, operate=True))
    add_post("/console/tokens/{id}/delete", page(delete_token, post=True, operate=True))
    add_get("/console/datastores", page(datastores))
    add_post("/console/datastores", page(create_datastore, post=True, operate=True))
    add_post("/console/datastores/{alias}/delete", page(delete_datastore, post=True, operate=True))
    add_get("/console/hosts", page(hosts, admin=True))
    add_get("/console/projects", page(projects, admin=True))
    add_post("/console/projects", page(create_project, post=True, admin=True))
    add_post("/console/projects/{name}/quota", page(set_quota, post=True, admin=True))
    add_post("/console/hosts/{id}/{action}", page(host_action, post=True, admin=True))
