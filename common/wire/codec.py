"""Decoding requests (one decoder per type, built once; a validation error is a 400 naming
the field), encoding replies, and turning an error body back into an :class:`ApiError`."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from common.errors import STATUS, ApiError, code_for_status
from common.wire.user import ErrorBody

T = TypeVar("T")
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


def decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    """The decoder for ``type_``, built once and reused."""
    found = _decoders.get(type_)
    if found is None:
        found = _decoders[type_] = msgspec.json.Decoder(type_)
    return found


def decode(body: bytes, type_: type[T]) -> T:
    """Decode a request body; any problem is a 400 whose message names the field."""
    if not body:
        raise ApiError("invalid_request", "request body is empty; expected a JSON object")
    try:
        return decoder(type_).decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError("invalid_request", f"invalid request: {exc}")
    except msgspec.DecodeError as exc:
        raise ApiError("invalid_request", f"request body is not valid JSON: {exc}")


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def error_from_body(status: int, body: bytes | str) -> ApiError | None:
    """The :class:`ApiError` an ``{"code", "message", "detail"}`` body describes, as the server
    raised it; ``None`` when the body is not one (a proxy's HTML page, a truncated reply), for
    the caller to describe the failure its own way. A code this side does not know (a newer
    peer) becomes the one its HTTP status maps to, keeping the message and detail."""
    try:
        error = decoder(ErrorBody).decode(body)
    except msgspec.MsgspecError:
        return None
    code = error.code if error.code in STATUS else code_for_status(status)
    return ApiError(code, error.message, **error.detail)
