"""Who is calling: a project token, the admin token, or a signed agent."""

from __future__ import annotations

import hmac

from aiohttp import web

from common.auth import H_NONCE, H_TIMESTAMP, token_digest
from common.errors import ApiError
from scheduler.api.context import ctx
from scheduler.projects import Principal


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthenticated", "missing bearer token (Authorization: Bearer <token>)")
    return token.strip()


def is_admin_token(request: web.Request, token: str) -> bool:
    expected = ctx(request).admin_digest
    return bool(expected) and hmac.compare_digest(token_digest(token), expected)


async def project_principal(request: web.Request, *, operate: bool = False) -> Principal:
    """The project token's principal; ``operate`` requires role ``operator``."""
    token = _bearer(request)
    if is_admin_token(request, token):
        raise ApiError("forbidden", "the admin token reaches /v1/admin/* only; use a project token")
    principal = await ctx(request).projects.principal(token)
    if principal is None:
        raise ApiError("unauthenticated", "unknown token")
    if operate and not principal.may_operate:
        raise ApiError(
            "forbidden",
            f"token of project {principal.project} has role {principal.role}; "
            "this needs role operator",
            role=principal.role,
        )
    return principal


async def require_admin(request: web.Request) -> None:
    token = _bearer(request)
    if is_admin_token(request, token):
        return
    if await ctx(request).projects.principal(token) is not None:
        raise ApiError("forbidden", "this endpoint needs the admin token")
    raise ApiError("unauthenticated", "unknown token")


def require_router(request: web.Request) -> None:
    """The routers' token (``router_token_file``), and nothing else, reaches ``/v1/router/*``."""
    token = _bearer(request)
    if not hmac.compare_digest(token_digest(token), ctx(request).router_digest):
        raise ApiError("unauthenticated", "this endpoint needs the router token")


def require_scraper(request: web.Request) -> None:
    """``/metrics``: the scrape token (``metrics_token_file``) or the admin token."""
    token = _bearer(request)
    digest = token_digest(token)
    if not (
        hmac.compare_digest(digest, ctx(request).metrics_digest) or is_admin_token(request, token)
    ):
        raise ApiError(
            "unauthenticated", "this endpoint needs the metrics token or the admin token"
        )


async def signed_agent(request: web.Request) -> tuple[str, bytes]:
    """``(host_id, body)`` of a correctly signed, fresh, first-seen agent request."""
    body = await request.read()
    context = ctx(request)
    host_id = context.verifier.verify(request.method, request.raw_path, request.headers, body)
    # This replica had not seen the nonce; no other replica may have either.
    await context.replay.first_use(
        host_id, request.headers[H_NONCE], float(request.headers[H_TIMESTAMP])
    )
    return host_id, body
