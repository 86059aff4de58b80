"""Request signing between agents and the scheduler, and bearer-token helpers.

A signed request carries four headers::

    X-Nbfleet-Host:       the agent's host id (which secret to use)
    X-Nbfleet-Timestamp:  unix seconds, as an integer
    X-Nbfleet-Nonce:      32 random hex characters, never reused
    X-Nbfleet-Signature:  hex HMAC-SHA256(secret, canonical)

where ``canonical`` is ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nhex(sha256(body))``. The
scheduler signs its calls to an agent the same way with the same per-agent secret.

:class:`Verifier` refuses a missing header, a bad signature, a timestamp more than
:data:`MAX_SKEW_S` away from its clock, and a nonce it has already accepted within the window
(a replay). Nonces are remembered for twice the skew window, which covers every timestamp that
could still pass the skew check.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from common.errors import ApiError

MAX_SKEW_S = 300
H_HOST = "X-Nbfleet-Host"
H_TIMESTAMP = "X-Nbfleet-Timestamp"
H_NONCE = "X-Nbfleet-Nonce"
H_SIGNATURE = "X-Nbfleet-Signature"


def canonical(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path_qs}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign(
    secret: bytes,
    host_id: str,
    method: str,
    path_qs: str,
    body: bytes = b"",
    *,
    now: float | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request. ``path_qs`` is the path with its query string."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    mac = hmac.new(secret, canonical(method, path_qs, timestamp, nonce, body), hashlib.sha256)
    return {
        H_HOST: host_id,
        H_TIMESTAMP: timestamp,
        H_NONCE: nonce,
        H_SIGNATURE: mac.hexdigest(),
    }


def _unauthenticated(message: str) -> ApiError:
    return ApiError("unauthenticated", message)


class Verifier:
    """Checks signed requests; one instance per receiving process (it holds the nonce cache).

    ``secret_for(host_id)`` returns the host's secret or ``None`` for an unknown host.
    """

    def __init__(
        self,
        secret_for: Callable[[str], bytes | None],
        *,
        clock: Callable[[], float] = time.time,
        max_skew_s: int = MAX_SKEW_S,
    ) -> None:
        self._secret_for = secret_for
        self._clock = clock
        self._max_skew_s = max_skew_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes) -> str:
        """Return the authenticated host id, or raise ``ApiError('unauthenticated')``."""
        try:
            host_id = headers[H_HOST]
            timestamp = headers[H_TIMESTAMP]
            nonce = headers[H_NONCE]
            signature = headers[H_SIGNATURE]
        except KeyError as missing:
            raise _unauthenticated(f"request is not signed: header {missing.args[0]} missing")
        secret = self._secret_for(host_id)
        if secret is None:
            raise _unauthenticated(f"unknown host {host_id!r}")
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise _unauthenticated(f"{H_TIMESTAMP} is not an integer")
        expected = hmac.new(
            secret, canonical(method, path_qs, timestamp, nonce, body), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise _unauthenticated("bad signature")
        now = self._clock()
        if abs(now - sent_at) > self._max_skew_s:
            raise _unauthenticated(
                f"stale request: timestamp is {int(now - sent_at)}s from the receiver's clock "
                f"(at most {self._max_skew_s}s allowed)"
            )
        self._forget_before(now - 2 * self._max_skew_s)
        key = f"{host_id}:{nonce}"
        if key in self._seen:
            raise _unauthenticated("replayed request: nonce already used")
        self._seen[key] = now
        return host_id

    def _forget_before(self, cutoff: float) -> None:
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if seen_at >= cutoff:
                break
            del self._seen[key]


def read_secret(path: str | Path) -> bytes:
    """Read a secret file; refuses an empty one so a missing provision step is caught early."""
    data = Path(path).read_bytes().strip()
    if not data:
        raise ValueError(f"secret file {path} is empty")
    return data


def new_token(prefix: str) -> str:
    """A bearer token: a readable prefix (``nbf_``, ``nba_``) and 256 random bits."""
    return f"{prefix}{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    """What the scheduler stores for a token: tokens are never stored in the clear."""
    return hashlib.sha256(token.encode()).hexdigest()
