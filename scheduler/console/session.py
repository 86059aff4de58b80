"""The console's session: who signed in, kept in one cookie, and the CSRF token of their forms.

* Signing in exchanges a token (a project token, or the admin token) for the cookie
  :data:`COOKIE`: the token sealed with Fernet under a key derived from the scheduler's secrets
  key (``secrets_key_file``, which every replica shares, so any replica opens any session),
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/console``, ``Secure`` when the console is reached
  over HTTPS, for :data:`SESSION_S`. The token is never in a URL, and the cookie is useless to
  the API (it wants the token itself). The token is checked again at every request, so a
  deleted token ends its sessions at once. Signing out clears the cookie.
* Every state-changing form carries ``csrf``: an HMAC of the session cookie under another
  derived key (:meth:`Sessions.csrf`). A forged post (another site's form, which SameSite=Strict
  already keeps the cookie from) or a stale form (from before the last sign-in) is refused.
  The sign-in form, posted before there is a session, is checked the same way against the
  pre-session cookie :data:`PRE_COOKIE` (double submit), so nobody can sign a visitor into
  their own project.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

COOKIE = "nbfleet_console"
PRE_COOKIE = "nbfleet_console_form"
PATH = "/console"
#: A session lasts this long after sign-in.
SESSION_S = 12 * 3600


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"nbfleet console " + purpose, hashlib.sha256).digest()


class Sessions:
    """Seals tokens into session cookies and opens them; makes and checks CSRF tokens."""

    def __init__(self, secrets_key: bytes) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secrets_key, b"session")))
        self._csrf_key = _derive(secrets_key, b"csrf")

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def token(self, request: web.Request) -> str | None:
        """The token the request's session holds, if any (and not expired)."""
        sealed = request.cookies.get(COOKIE)
        if not sealed:
            return None
        try:
            return self._fernet.decrypt(sealed.encode(), ttl=SESSION_S).decode()
        except (InvalidToken, UnicodeDecodeError):
            return None

    def csrf_for(self, basis: str) -> str:
        """The CSRF token of forms shown with the cookie value ``basis``."""
        return hmac.new(self._csrf_key, basis.encode(), hashlib.sha256).hexdigest()[:40]

    def csrf(self, request: web.Request) -> str:
        """The CSRF token of the request's session (or of its pre-session cookie)."""
        return self.csrf_for(request.cookies.get(COOKIE) or request.cookies.get(PRE_COOKIE) or "")

    def csrf_ok(self, request: web.Request, sent: str, *, signing_in: bool = False) -> bool:
        """``sent`` is the CSRF token of the request's session (``signing_in``: of its
        pre-session cookie, which the sign-in form is shown with)."""
        basis = request.cookies.get(PRE_COOKIE if signing_in else COOKIE)
        if not signing_in:
            basis = basis or request.cookies.get(PRE_COOKIE)
        return bool(basis and sent) and hmac.compare_digest(sent, self.csrf_for(basis or ""))


def secure(request: web.Request, public_base: str) -> bool:
    return public_base.startswith("https://") or request.secure


def start(response: web.StreamResponse, sealed: str, *, https: bool) -> None:
    response.set_cookie(
        COOKIE,
        sealed,
        path=PATH,
        max_age=SESSION_S,
        httponly=True,
        samesite="Strict",
        secure=https,
    )
    response.del_cookie(PRE_COOKIE, path=PATH)


def end(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=PATH)


def pre_session(request: web.Request, response: web.StreamResponse, *, https: bool) -> str:
    """The sign-in form's double-submit cookie value: the browser's, or a new one set on
    ``response``."""
    value = request.cookies.get(PRE_COOKIE)
    if value:
        return value
    value = secrets.token_urlsafe(24)
    response.set_cookie(
        PRE_COOKIE, value, path=PATH, httponly=True, samesite="Strict", secure=https
    )
    return value
