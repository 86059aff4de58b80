"""Several scheduler URLs: reading the setting, the order URLs are tried in, which failures
send a request on, and the configs that carry the setting."""

import json

import pytest

from common.config import AgentConfig, ClientConfig, ConfigError, load
from common.failover import (
    SchedulerUrls,
    Unanswered,
    may_send_again,
    parse_urls,
    proxy_failure,
    tried_text,
)

A, B, C = "http://a:8470", "http://b:8470", "https://c.example.com/nbfleet"


@pytest.mark.parametrize(
    "setting",
    [
        f"{A},{B}/, {C}/",
        [A, f"{B},{C}"],
        [A, B, A, C],  # a repeat is tried once
        f" {A} ,, {B},{C},",
    ],
)
def test_parse_urls_reads_commas_lists_and_trailing_slashes(setting) -> None:
    assert parse_urls(setting, "url") == (A, B, C)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("", "url names no scheduler URL"),
        ([], "url names no scheduler URL"),
        (" , ", "url names no scheduler URL"),
        ("a:8470", "url: 'a:8470' is not an http:// or https:// URL"),
        (f"{A},ftp://b", "url: 'ftp://b' is not an http:// or https:// URL"),
        ("http://", "url: 'http://' is not an http:// or https:// URL"),
        (f"{A}/?x=1", "has a query or fragment"),
    ],
)
def test_parse_urls_refuses_naming_the_setting(setting, message) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_urls(setting, "url")


def test_order_starts_at_the_url_that_answered_last_and_keeps_the_configured_cycle() -> None:
    urls = SchedulerUrls([A, B, C], name="url")
    assert urls.in_order() == [A, B, C]
    assert urls.answered(A, B) is True
    assert urls.current == B
    assert urls.in_order() == [B, C, A]
    # It sticks: A answering again (it came back) does not move requests back to it ...
    assert urls.answered(B, B) is False
    assert urls.in_order() == [B, C, A]
    # ... until B gives no answer and C does.
    assert urls.answered(B, C) is True
    assert urls.in_order() == [C, A, B]


def test_a_request_that_started_before_a_switch_does_not_switch_back() -> None:
    urls = SchedulerUrls([A, B, C], name="url")
    order_of_late_request = urls.in_order()  # started while A was current ...
    assert urls.answered(A, B) is True  # ... another request moved to B ...
    # ... then the late one, which had failed over from A to C, is answered by C.
    assert urls.answered(order_of_late_request[0], C) is False
    assert urls.current == B


def test_str_is_the_setting_text() -> None:
    assert str(SchedulerUrls(f"{A}/, {B}", name="url")) == f"{A},{B}"


API_503 = json.dumps({"code": "no_capacity", "message": "no host has 8 GPUs"}).encode()
API_502 = json.dumps({"code": "upstream_unavailable", "message": "host h1 down"}).encode()
HTML = b"<html><body><h1>503 Service Unavailable</h1></body></html>"


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (503, HTML, Unanswered.NOT_SENT),  # a proxy with no replica: passed on to nobody
        (503, b"", Unanswered.NOT_SENT),
        (502, HTML, Unanswered.SENT),  # a proxy whose replica broke off: it may have applied
        (504, HTML, Unanswered.SENT),
        (503, API_503, None),  # the API's own answers: every replica would say the same
        (502, API_502, None),
        (500, HTML, None),  # another 5xx is an answer
        (404, HTML, None),
        (200, b"{}", None),
    ],
)
def test_proxy_failure_tells_a_proxy_from_the_api(status, body, expected) -> None:
    assert proxy_failure(status, body) is expected


@pytest.mark.parametrize(
    "method, failure, again",
    [
        ("POST", Unanswered.NOT_SENT, True),
        ("PATCH", Unanswered.NOT_SENT, True),
        ("POST", Unanswered.SENT, False),
        ("PATCH", Unanswered.SENT, False),
        ("GET", Unanswered.SENT, True),
        ("delete", Unanswered.SENT, True),
        ("PUT", Unanswered.SENT, True),
    ],
)
def test_may_send_again_only_what_cannot_apply_twice(method, failure, again) -> None:
    assert may_send_again(method, failure) is again


def test_tried_text_names_each_url_and_why() -> None:
    assert tried_text([(A, "refused"), (B, "HTTP 503")]) == f"{A} (refused), {B} (HTTP 503)"


def test_agent_config_takes_a_list_a_string_or_commas_from_the_environment(tmp_path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'scheduler_url = ["{A}", "{B}"]\n')
    assert load(AgentConfig, path, env_prefix="NBFLEET_AGENT_").scheduler_url == [A, B]
    environ = {"NBFLEET_AGENT_SCHEDULER_URL": f"{B},{A}"}
    config = load(AgentConfig, path, env_prefix="NBFLEET_AGENT_", environ=environ)
    assert parse_urls(config.scheduler_url, "scheduler_url") == (B, A)
    path.write_text(f'scheduler_url = "{A}"\n')  # one string keeps working
    assert load(AgentConfig, path, env_prefix="NBFLEET_AGENT_").scheduler_url == A


def test_a_bad_scheduler_url_is_a_config_error_naming_setting_and_file(tmp_path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'scheduler_url = ["{A}", "b:8470"]\n')
    with pytest.raises(ConfigError, match=rf"{path}: scheduler_url: 'b:8470' is not an http"):
        load(AgentConfig, path, env_prefix="NBFLEET_AGENT_")
    path.write_text('url = []\ntoken = "t"\n')
    with pytest.raises(ConfigError, match=rf"{path}: url names no scheduler URL"):
        load(ClientConfig, path, env_prefix="NBFLEET_")
