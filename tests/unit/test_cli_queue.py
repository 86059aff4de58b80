"""`nbfleet notebook` with flavors, restart-on-timeout, the queue and quota refusals, against a
stand-in scheduler on loopback."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from tests.fakes.stand_in_scheduler import cli_against, error
from tests.unit.test_cli import NOTEBOOK

QUEUED = dict(
    NOTEBOOK,
    id="q1",
    state="QUEUED",
    state_reason="no host has 2 free H100",
    gpu=2,
    cpu=32,
    host=None,
    gpus=[],
    url=None,
    history=None,
    flavor="h100-1-gpu",
    restart_on_timeout=True,
    disk_gb=100,
    queue={"position": 3, "waiting_for": "2 × H100", "queued_at": 1.0, "blocked_by": "capacity"},
)


def queued(position: int, blocked_by: str = "capacity") -> dict:
    return dict(QUEUED, queue=dict(QUEUED["queue"], position=position, blocked_by=blocked_by))


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    yield stand_in
    stand_in.close()


def test_run_sends_flavor_and_restart_on_timeout(server, capsys) -> None:
    server.replies[("POST", "/v1/notebooks")] = (201, QUEUED)
    argv = ["notebook", "run", "conda", "jupyterlab", "--gpu", "2", "--flavor", "h100-1-gpu"]
    assert main([*argv, "--restart-on-timeout"]) == 0
    sent = json.loads(server.calls[0][3])
    assert sent["flavor"] == "h100-1-gpu" and sent["restart_on_timeout"] is True
    # The 201 may already be QUEUED: say so rather than pretend it is starting.
    assert "QUEUED: waiting for 2 × H100, position 3" in capsys.readouterr().out


def test_run_without_the_new_flags_sends_their_defaults(server) -> None:
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    assert main(["notebook", "run", "conda", "jupyterlab", "-o", "json"]) == 0
    sent = json.loads(server.calls[0][3])
    assert sent["flavor"] is None and sent["restart_on_timeout"] is False


def test_over_quota_prints_the_schedulers_message(server, capsys) -> None:
    server.replies[("POST", "/v1/notebooks")] = error(
        403,
        "forbidden",
        "project p: GPUs in use 4 + 1 requested > quota 4",
        resource="gpus",
        used=4,
        requested=1,
        quota=4,
    )
    assert main(["notebook", "run", "conda", "jupyterlab"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "nbfleet: project p: GPUs in use 4 + 1 requested > quota 4\n"
    assert captured.out == ""


def test_get_shows_queue_position_flavor_restart_and_disk(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks/q1")] = (200, QUEUED)
    assert main(["notebook", "get", "q1"]) == 0
    out = capsys.readouterr().out
    assert "State:              QUEUED: waiting for 2 × H100, position 3 (queued since" in out
    assert "blocked by" not in out
    assert "Flavor:             h100-1-gpu" in out
    assert "Restart on timeout: yes" in out
    assert "2 GPU, 32 CPU, 1024 MiB, 100 GB disk" in out


def test_get_says_when_the_project_quota_holds_it(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks/q1")] = (200, queued(1, "quota"))
    assert main(["notebook", "get", "q1"]) == 0
    assert "QUEUED: waiting for 2 × H100, position 1, blocked by project quota" in (
        capsys.readouterr().out
    )


def test_get_of_a_notebook_without_flavor(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, NOTEBOOK)
    assert main(["notebook", "get", "6f1c"]) == 0
    out = capsys.readouterr().out
    assert "Flavor:             -" in out and "Restart on timeout: no" in out
    assert "RUNNING since" in out and "disk" not in out


def test_list_shows_the_position_of_queued_ones(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [NOTEBOOK, QUEUED]})
    assert main(["notebook", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATE"]
    assert lines[1].split()[2] == "RUNNING"
    assert lines[2].split()[:4] == ["q1", "nb", "QUEUED", "#3"]


def test_wait_keeps_waiting_through_the_queue_and_shows_the_position(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks/q1")] = [
        (200, queued(3)),
        (200, queued(1)),
        (200, dict(NOTEBOOK, id="q1")),
    ]
    assert main(["notebook", "wait", "q1", "--timeout", "60"]) == 0
    captured = capsys.readouterr()
    assert "QUEUED: waiting for 2 × H100, position 3" in captured.err
    assert "QUEUED: waiting for 2 × H100, position 1" in captured.err
    assert "RUNNING" in captured.out
    assert len(server.calls) == 3


def test_wait_giving_up_while_queued_names_the_position(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks/q1")] = (200, queued(5, "quota"))
    assert main(["notebook", "wait", "q1", "--timeout", "0"]) == 3
    err = capsys.readouterr().err
    assert "gave up after 0s: notebook q1 is QUEUED: waiting for 2 × H100, position 5" in err
    assert "blocked by project quota" in err


def test_wait_for_queued_itself_is_reached(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks/q1")] = (200, QUEUED)
    assert main(["notebook", "wait", "q1", "--state", "queued", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["queue"]["position"] == 3


def test_a_queued_notebook_stopped_while_waiting_ends_the_wait(server, capsys) -> None:
    stopped = dict(QUEUED, state="STOPPED", state_reason="left the queue", queue=None)
    server.replies[("GET", "/v1/notebooks/q1")] = [(200, queued(2)), (200, stopped)]
    assert main(["notebook", "wait", "q1", "--timeout", "60"]) == 3
    assert "notebook q1 is STOPPED, not RUNNING: left the queue" in capsys.readouterr().err


@pytest.mark.parametrize(
    "label, names",
    [("novalue", "must look like KEY=VALUE"), ("te am=cv", "invalid label key 'te am'")],
)
def test_bad_label_on_run_is_a_usage_error_naming_the_flag(server, capsys, label, names) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["notebook", "run", "conda", "jupyterlab", "--label", label])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--label" in err and names in err
    assert server.calls == []


@pytest.mark.parametrize("argv", [["q1", "stopped"], ["q1", "--state", "STOPPED"]])
def test_wait_takes_the_state_as_an_argument_or_an_option(server, capsys, argv) -> None:
    stopped = dict(NOTEBOOK, id="q1", state="STOPPED", state_reason="stopped by user")
    server.replies[("GET", "/v1/notebooks/q1")] = [(200, dict(NOTEBOOK, id="q1")), (200, stopped)]
    assert main(["notebook", "wait", *argv, "--timeout", "60", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "STOPPED"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["q1", "RUNNING", "--state", "STOPPED"], "STATE RUNNING and --state STOPPED disagree"),
        (["q1", "asleep"], "'ASLEEP' is not a notebook state (QUEUED, STARTING"),
    ],
)
def test_wait_with_a_bad_state_is_a_usage_error(server, capsys, argv, says) -> None:
    assert main(["notebook", "wait", *argv]) == 2
    assert says in capsys.readouterr().err
    assert server.calls == []


def test_stop_wait_follows_the_notebook_to_stopped(server, capsys) -> None:
    stopping = dict(NOTEBOOK, id="q1", state="STOPPING", state_reason="stopped by user")
    stopped = dict(stopping, state="STOPPED")
    server.replies[("POST", "/v1/notebooks/q1/stop")] = (202, stopping)
    server.replies[("GET", "/v1/notebooks/q1")] = [(200, stopping), (200, stopped)]
    assert main(["notebook", "stop", "q1", "--wait", "--timeout", "60"]) == 0
    captured = capsys.readouterr()
    assert "STOPPING" in captured.err and "STOPPED" in captured.out
    assert [c[:2] for c in server.calls] == [
        ("POST", "/v1/notebooks/q1/stop"),
        ("GET", "/v1/notebooks/q1"),
        ("GET", "/v1/notebooks/q1"),
    ]


def test_start_wait_goes_through_the_queue_to_running(server, capsys) -> None:
    server.replies[("POST", "/v1/notebooks/q1/start")] = (202, queued(2))
    server.replies[("GET", "/v1/notebooks/q1")] = [(200, queued(1)), (200, dict(NOTEBOOK, id="q1"))]
    assert main(["notebook", "start", "q1", "--wait", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "RUNNING"


def test_stop_wait_that_ends_elsewhere_exits_3(server, capsys) -> None:
    failed = dict(NOTEBOOK, id="q1", state="FAILED", state_reason="volume push failed")
    server.replies[("POST", "/v1/notebooks/q1/stop")] = (202, dict(failed, state="STOPPING"))
    server.replies[("GET", "/v1/notebooks/q1")] = (200, failed)
    assert main(["notebook", "stop", "q1", "--wait"]) == 3
    assert "notebook q1 is FAILED, not STOPPED: volume push failed" in capsys.readouterr().err


def test_stop_without_wait_returns_at_once(server, capsys) -> None:
    stopping = dict(NOTEBOOK, id="q1", state="STOPPING")
    server.replies[("POST", "/v1/notebooks/q1/stop")] = (202, stopping)
    assert main(["notebook", "stop", "q1", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "STOPPING"
    assert len(server.calls) == 1
