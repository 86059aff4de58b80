"""The CLI with several scheduler URLs: a request moves on from a URL that gives no answer,
sticks to the one that answered, is not sent twice when it may have been applied, and when
nothing answers the user is told every URL tried. Real sockets on loopback: the stand-in
scheduler, and failures as they happen (refused, a load balancer's page, a hung replica)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cli.client import Client
from cli.main import main
from common.config import ClientConfig
from common.errors import ApiError
from tests.fakes.stand_in_scheduler import StandInScheduler, Stream, cli_against, error
from tests.support.unanswering import Silent, refused_url

NOTEBOOK = {
    "id": "6f1c",
    "project": "default",
    "name": "nb",
    "framework": "conda",
    "editor": "jupyterlab",
    "image": "nbfleet/conda:latest",
    "state": "QUEUED",
    "state_reason": "waiting for a GPU",
    "state_at": 1.0,
    "gpu": 1,
    "cpu": 4,
    "memory_mb": 1024,
    "labels": {},
    "envvars": {},
    "created_at": 1.0,
    "generation": 1,
}
RUNNING = {**NOTEBOOK, "state": "RUNNING", "state_reason": "editor answers", "host": "h1"}


@pytest.fixture
def live(monkeypatch, tmp_path) -> Iterator[StandInScheduler]:
    stand_in = cli_against(monkeypatch, tmp_path)
    yield stand_in
    stand_in.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    hung = Silent()
    yield hung
    hung.close()


def client(*urls: str, timeout_s: float = 0.5) -> Client:
    return Client(ClientConfig(url=list(urls), token="nbf_test"), timeout_s=timeout_s)


@pytest.mark.parametrize("dead", ["refused", "proxy"])
@pytest.mark.parametrize("live_first", [False, True])
def test_list_goes_through_the_url_that_answers_in_either_order(
    live, proxies, monkeypatch, capsys, dead, live_first
) -> None:
    proxy = proxies(503) if dead == "proxy" else None
    dead_url = proxy.url if proxy else refused_url()
    urls = [live.url, dead_url] if live_first else [dead_url, live.url]
    monkeypatch.setenv("NBFLEET_URL", ",".join(urls))
    live.replies[("GET", "/v1/notebooks")] = (200, {"items": [NOTEBOOK]})
    assert main(["notebook", "list"]) == 0
    assert "6f1c" in capsys.readouterr().out
    assert [c[:2] for c in live.calls] == [("GET", "/v1/notebooks")]
    if proxy is not None:
        assert proxy.hits == (0 if live_first else 1)


@pytest.mark.parametrize("dead", ["refused", "proxy 503"])
def test_a_run_that_was_sent_nowhere_goes_to_the_next_url(live, proxies, monkeypatch, dead):
    dead_url = proxies(503).url if dead == "proxy 503" else refused_url()
    monkeypatch.setenv("NBFLEET_URL", f"{dead_url},{live.url}")
    live.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    assert main(["notebook", "run", "conda", "jupyterlab", "-o", "json"]) == 0
    assert [c[:2] for c in live.calls] == [("POST", "/v1/notebooks")]


@pytest.mark.parametrize("dead", ["silent", "proxy 502", "proxy 504"])
def test_a_run_that_may_have_been_applied_is_not_sent_again(live, proxies, silent, dead):
    dead_url = silent.url if dead == "silent" else proxies(int(dead[-3:])).url
    with pytest.raises(ApiError) as raised:
        client(dead_url, live.url).request("POST", "/v1/notebooks", body={"framework": "conda"})
    assert raised.value.code == "upstream_unavailable"
    message = raised.value.message
    assert message.startswith(f"no reply from the scheduler at {dead_url} to POST /v1/notebooks")
    assert "it may have been applied, so it was not sent again" in message
    assert live.calls == []


def test_a_patch_that_may_have_been_applied_names_the_urls_passed_before(
    live, proxies, silent
) -> None:
    refused = refused_url()
    with pytest.raises(ApiError) as raised:
        client(refused, silent.url, live.url).request("PATCH", "/v1/admin/projects/p/quota")
    assert f"(before it, no answer from {refused} (" in raised.value.message
    assert live.calls == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_idempotent_request_goes_on_after_a_timeout(live, silent, method) -> None:
    live.replies[(method, "/v1/notebooks/6f1c")] = (200, NOTEBOOK)
    hub = client(silent.url, live.url)
    assert json.loads(hub.request(method, "/v1/notebooks/6f1c"))["id"] == "6f1c"
    assert hub.urls.current == live.url


def test_the_apis_own_503_is_an_answer(live, monkeypatch, capsys) -> None:
    first = StandInScheduler()
    try:
        first.replies[("POST", "/v1/notebooks")] = error(
            503, "no_capacity", "no host has 8 GPUs (the largest has 4)"
        )
        monkeypatch.setenv("NBFLEET_URL", f"{first.url},{live.url}")
        assert main(["notebook", "run", "conda", "jupyterlab", "--gpu", "8"]) == 1
        assert "no host has 8 GPUs (the largest has 4)" in capsys.readouterr().err
        assert live.calls == []
    finally:
        first.close()


def test_when_nothing_answers_the_user_is_told_every_url(proxies, monkeypatch, capsys):
    monkeypatch.setenv("NBFLEET_TOKEN", "x")
    monkeypatch.delenv("NBFLEET_CONFIG", raising=False)
    refused, proxy = refused_url(), proxies(503)
    monkeypatch.setenv("NBFLEET_URL", f"{refused},{proxy.url}")
    assert main(["notebook", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nbfleet: cannot reach the scheduler at any of its 2 URLs: ")
    assert f"{refused} (" in err and "Connection refused" in err
    assert err.endswith(f"{proxy.url} (HTTP 503 Service Unavailable)")


def test_the_url_that_answered_sticks_for_the_rest_of_the_command(
    live, proxies, monkeypatch
) -> None:
    """``run --wait`` polls: after the first request moved on, the proxy sees no other."""
    proxy = proxies(503)
    monkeypatch.setenv("NBFLEET_URL", f"{proxy.url},{live.url}")
    live.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    live.replies[("GET", "/v1/notebooks/6f1c")] = [(200, NOTEBOOK)] * 3 + [(200, RUNNING)]
    assert main(["notebook", "run", "conda", "jupyterlab", "--wait", "-o", "json"]) == 0
    assert len(live.calls) == 5
    assert proxy.hits == 1


def test_urls_from_a_config_list_and_a_flag_that_wins(live, proxies, monkeypatch, tmp_path):
    proxy = proxies(503)
    config = tmp_path / "cli.toml"
    config.write_text(f'url = ["{refused_url()}", "{live.url}"]\ntoken = "nbf_file"\n')
    monkeypatch.delenv("NBFLEET_URL")
    monkeypatch.delenv("NBFLEET_TOKEN")
    monkeypatch.setenv("NBFLEET_CONFIG", str(config))
    live.replies[("GET", "/v1/catalog")] = (200, {"frameworks": [], "editors": []})
    assert main(["catalog"]) == 0
    assert live.calls[0][2] == "Bearer nbf_file"
    assert main(["--url", f"{proxy.url}, {live.url}/", "catalog"]) == 0
    assert proxy.hits == 1 and len(live.calls) == 2


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--url", "scheduler:8470"], {}, "--url: 'scheduler:8470' is not an http"),
        ([], {"NBFLEET_URL": "http://a:1,b:2"}, "url: 'b:2' is not an http"),
    ],
)
def test_a_bad_url_is_a_usage_error(monkeypatch, capsys, argv, env, message) -> None:
    monkeypatch.setenv("NBFLEET_TOKEN", "x")
    monkeypatch.delenv("NBFLEET_CONFIG", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*argv, "notebook", "list"]) == 2
    assert message in capsys.readouterr().err


def test_a_followed_log_starts_at_the_url_that_answers(live, proxies, monkeypatch, capsys):
    proxy = proxies(503)
    monkeypatch.setenv("NBFLEET_URL", f"{proxy.url},{live.url}")
    live.replies[("GET", "/v1/notebooks/6f1c/logs")] = (200, Stream([b"one\n", b"two\n"]))
    assert main(["notebook", "logs", "6f1c", "-f"]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    assert proxy.hits == 1


def test_a_followed_log_refused_by_the_api_is_not_failed_over(live, monkeypatch, capsys):
    first = StandInScheduler()
    try:
        monkeypatch.setenv("NBFLEET_URL", f"{first.url},{live.url}")
        assert main(["notebook", "logs", "nope", "-f"]) == 1
        assert "notebook nope does not exist" in capsys.readouterr().err
        assert live.calls == []
    finally:
        first.close()


def test_base_is_every_url_as_url_takes_them() -> None:
    """What ``notebook ssh-config`` writes after ``--url`` for ssh's ProxyCommand."""
    assert client("http://a:1/", "http://b:2").base == "http://a:1,http://b:2"
