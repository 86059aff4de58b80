"""The shared HTTP server pieces: malformed-request warnings rate-limited per server with a
count of those left out, other records passed through, and which Content-Types are JSON."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine

from common.errors import ApiError
from common.http_server import MalformedRequestLog, check_json_content_type, describe
from tests.fakes.inventory import FakeClock

#: What aiohttp's C parser says about a header without a colon.
NO_COLON = "Invalid header token:\n\n  b'no colon here'\n           ^"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "common.http_server"]


def test_one_warning_per_interval_then_a_count_of_those_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    server_log = MalformedRequestLog("scheduler", interval_s=60, clock=clock)
    # aiohttp's calls: an ERROR with the exception, or DEBUG for a bad first method.
    server_log.exception(
        "Error handling request from %s", "10.0.0.7", exc_info=BadHttpMessage(NO_COLON)
    )
    for _ in range(5):
        server_log.debug(
            "Error handling request from %s", "10.0.0.8", exc_info=BadStatusLine("GARBAGE")
        )
    assert warnings(caplog) == [
        "scheduler peer=10.0.0.7 sent a malformed HTTP request (Invalid header token: "
        "b'no colon here'); answered 400 and closed the connection"
    ]
    assert server_log.suppressed == 5

    clock.advance(61)
    server_log.exception(
        "Error handling request from %s", "10.0.0.9", exc_info=BadHttpMessage(NO_COLON)
    )
    [_, second] = warnings(caplog)
    assert second.startswith("scheduler peer=10.0.0.9 ")
    assert second.endswith("; 5 more since the last such warning were not logged"), second
    assert server_log.suppressed == 0
    assert all(r.exc_info is None for r in caplog.records if r.name == "common.http_server")


def test_each_server_has_its_own_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    for subject in ("scheduler", "host=h1 agent"):
        MalformedRequestLog(subject, clock=clock).exception(
            "Error handling request from %s", "10.0.0.7", exc_info=BadHttpMessage(NO_COLON)
        )
    assert [m.split(" peer=")[0] for m in warnings(caplog)] == ["scheduler", "host=h1 agent"]


def test_other_records_pass_through_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server_log = MalformedRequestLog("scheduler", logger=logging.getLogger("aiohttp.server"))
    try:
        raise RuntimeError("handler bug")
    except RuntimeError as exc:
        server_log.exception("Unhandled exception", exc_info=exc)
    server_log.debug("Ignored premature client disconnection")
    [error, debug] = caplog.records
    assert (error.name, error.levelno, error.getMessage()) == (
        "aiohttp.server",
        logging.ERROR,
        "Unhandled exception",
    )
    assert error.exc_info is not None and isinstance(error.exc_info[1], RuntimeError)
    assert (debug.levelno, debug.getMessage()) == (
        logging.DEBUG,
        "Ignored premature client disconnection",
    )
    assert server_log.suppressed == 0


def test_description_is_one_printable_line() -> None:
    assert describe(BadHttpMessage(NO_COLON)) == "Invalid header token: b'no colon here'"
    assert describe(BadHttpMessage("bad\x1b[31m\ttoken")) == "bad\\x1b[31m\\ttoken"
    assert len(describe(BadHttpMessage("x" * 1000))) == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; Charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;charset=utf8",
    ],
)
def test_json_content_types(content_type: str) -> None:
    check_json_content_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "application/jsonp",
        "application/json, text/plain",
        "json",
    ],
)
def test_other_content_types_are_415(content_type: str | None) -> None:
    with pytest.raises(ApiError) as info:
        check_json_content_type(content_type)
    assert (info.value.code, info.value.status) == ("unsupported_media_type", 415)
    assert "application/json" in info.value.message
