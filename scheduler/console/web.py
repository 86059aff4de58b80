"""The console's plumbing: the page wrapper that signs in, checks CSRF and roles, and turns
an :class:`ApiError` into a page with its status and message; rendering with the
Content-Security-Policy (:data:`CSP`) every page carries; who is signed in (:func:`viewer`).

Every page answers ``text/html``, is never cached, and allows nothing but this origin's own
scripts, styles and forms.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from common.errors import ApiError
from common.states import NotebookState
from scheduler.api.auth import is_admin_token
from scheduler.api.context import ctx
from scheduler.console import session
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

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("scheduler.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["isotime"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


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
        text=TEMPLATES.get_template(template).render(
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
    if is_admin_token(request, token):
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
