"""Error codes and the one place they map to HTTP statuses.

Services raise :class:`ApiError` with a code from :data:`STATUS`; the scheduler's middleware turns
it into ``{"code", "message"}`` with the mapped status, and the CLI turns that body back into an
:class:`ApiError` so a user sees the same message the server wrote.
"""

from __future__ import annotations

STATUS: dict[str, int] = {
    "invalid_request": 400,  # body or query does not decode, or a field fails its constraint
    "unauthenticated": 401,  # no credentials, bad signature, stale or replayed request
    "forbidden": 403,  # credentials are fine but do not reach this resource
    "not_found": 404,
    "method_not_allowed": 405,  # the path exists but not with this method
    "conflict": 409,  # the resource's current state does not allow the action
    "payload_too_large": 413,
    "unsupported_media_type": 415,  # a JSON endpoint got a body not declared application/json
    "no_capacity": 503,  # no host can take the notebook right now
    "upstream_unavailable": 502,  # the agent that should answer could not be reached
    "internal": 500,
}


class ApiError(Exception):
    """An error with a stable code, a message for people, and optional structured detail."""

    def __init__(self, code: str, message: str, **detail: object) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def __str__(self) -> str:
        return self.message


def invalid(message: str, **detail: object) -> ApiError:
    return ApiError("invalid_request", message, **detail)


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError("not_found", f"{kind} {ident} does not exist", kind=kind, id=ident)


def conflict(message: str, **detail: object) -> ApiError:
    return ApiError("conflict", message, **detail)


def code_for_status(status: int) -> str:
    """The code to use for a status that arrived without a body we could read."""
    for code, mapped in STATUS.items():
        if mapped == status:
            return code
    return "internal"
