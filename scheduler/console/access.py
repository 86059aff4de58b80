"""Signing in and out of the console (:mod:`scheduler.console.session` holds the cookie and
the CSRF tokens).
"""

from __future__ import annotations

from aiohttp import web

from scheduler.api.auth import is_admin_token
from scheduler.api.context import ctx
from scheduler.api.editor import public_base
from scheduler.console import session
from scheduler.console.web import (
    SESSIONS,
    TEMPLATES,
    SignIn,
    error_page,
    secured,
    see_other,
    viewer,
)


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
    response.text = TEMPLATES.get_template("sign_in.html").render(
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
    admin = is_admin_token(request, token)
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
