"""`nbfleet admin project|token|host` against the stand-in's canned fleet."""

from __future__ import annotations

import json
import re

import pytest

from cli import output
from cli.main import main
from common import wire
from tests.fakes.stand_in_scheduler import cli_against
from tests.unit.test_cli_usage import rows


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    stand_in.serve_fleet()
    yield stand_in
    stand_in.close()


# ---------------------------------------------------------------- projects


def test_project_list_shows_quota_and_use(server, capsys) -> None:
    assert main(["admin", "project", "list"]) == 0
    table = rows(capsys.readouterr().out)
    assert table["PROJECT"] == ["GPUS", "CPUS", "NOTEBOOKS", "QUEUED", "CREATED"]
    assert table["vision"][:4] == ["3/4", "36/48", "2/10", "1"]
    assert table["nlp"][:4] == ["0/8", "0/96", "0/10", "0"]


def test_project_list_from_a_scheduler_without_quotas(server, capsys) -> None:
    bare = {"name": "old", "created_at": 1.0}
    server.replies[("GET", "/v1/admin/projects")] = (200, {"items": [bare]})
    assert main(["admin", "project", "list"]) == 0
    assert rows(capsys.readouterr().out)["old"][:4] == ["-/-", "-/-", "-/-", "0"]


def test_project_quota_without_flags_shows_it(server, capsys) -> None:
    assert main(["admin", "project", "quota", "vision"]) == 0
    assert server.calls[0][:2] == ("GET", "/v1/admin/projects/vision")
    out = capsys.readouterr().out
    assert "Project: vision" in out and rows(out)["GPUs"] == ["3", "4"]


def test_project_quota_patches_only_the_given_fields(server, capsys) -> None:
    argv = ["admin", "project", "quota", "vision", "--gpus", "8", "--cpus-per-notebook", "16"]
    assert main(argv) == 0
    method, path, _, body = server.calls[0]
    assert (method, path) == ("PATCH", "/v1/admin/projects/vision/quota")
    assert json.loads(body) == {"gpus": 8, "cpus_per_notebook": 16}
    out = capsys.readouterr().out
    assert rows(out)["GPUs"] == ["3", "8"]
    assert "CPUs per notebook           16" in out
    # The fields not given kept their values.
    assert server.fleet.projects["vision"].quota.cpus == 48


def test_project_quota_json(server, capsys) -> None:
    assert main(["admin", "project", "quota", "nlp", "--notebooks", "0", "-o", "json"]) == 0
    assert json.loads(server.calls[0][3]) == {"notebooks": 0}
    assert json.loads(capsys.readouterr().out)["quota"]["notebooks"] == 0


@pytest.mark.parametrize(
    "flag, value, names",
    [
        ("--gpus", "-1", "--gpus -1: must be >= 0"),
        ("--gpus-per-notebook", "17", "--gpus-per-notebook 17: must be <= 16"),
        ("--cpus-per-notebook", "300", "--cpus-per-notebook 300: must be <= 256"),
    ],
)
def test_project_quota_out_of_range_names_the_flag(server, capsys, flag, value, names) -> None:
    assert main(["admin", "project", "quota", "vision", flag, value]) == 2
    assert names in capsys.readouterr().err
    assert server.calls == []


def test_an_operator_sets_a_projects_idle_timeout(server, capsys) -> None:
    assert main(["admin", "project", "quota", "vision", "--idle-timeout", "60m"]) == 0
    assert json.loads(server.calls[0][3]) == {"idle_timeout_s": 3600}
    assert "Idle notebooks stop after: 60 min" in capsys.readouterr().out
    assert main(["admin", "project", "quota", "vision", "--idle-timeout", "off"]) == 0
    assert json.loads(server.calls[1][3]) == {"idle_timeout_s": 0}
    assert "Idle notebooks stop after: never" in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, names",
    [
        ("soon", "--idle-timeout: 'soon' is not a duration: write seconds, or a number with s, m"),
        ("5s", "--idle-timeout 5s: must be between 10 s and 365 days (or off)"),
        ("400d", "--idle-timeout 400d: must be between 10 s and 365 days (or off)"),
    ],
)
def test_a_bad_idle_timeout_names_the_flag(server, capsys, value, names) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["admin", "project", "quota", "vision", "--idle-timeout", value])
    assert exited.value.code == 2
    assert names in capsys.readouterr().err
    assert server.calls == []


def test_project_quota_of_an_unknown_project(server, capsys) -> None:
    assert main(["admin", "project", "quota", "ghost", "--gpus", "1"]) == 1
    assert "project ghost does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- tokens


def test_token_create_with_label_selector(server, capsys) -> None:
    argv = ["admin", "token", "create", "--project", "vision", "--role", "read"]
    assert main([*argv, "--label-selector", "team=cv", "--label-selector", "env=prod"]) == 0
    sent = json.loads(server.calls[0][3])
    assert sent == {
        "project": "vision",
        "role": "read",
        "description": "",
        "label_selector": {"team": "cv", "env": "prod"},
    }
    out = capsys.readouterr().out
    assert "nbf_3q2m9XkVtY7s" in out
    assert "reaches only notebooks labelled env=prod, team=cv" in out


def test_token_create_without_selector_says_nothing_about_labels(server, capsys) -> None:
    assert main(["admin", "token", "create", "--project", "vision"]) == 0
    assert json.loads(server.calls[0][3])["label_selector"] == {}
    assert "labelled" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "selector, names",
    [
        ("team", "must look like KEY=VALUE"),
        ("=cv", "must look like KEY=VALUE"),
        ("te@m=cv", "invalid label key 'te@m'"),
        ("team=c v", "invalid label value 'c v'"),
    ],
)
def test_bad_label_selector_names_the_flag(server, capsys, selector, names) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["admin", "token", "create", "--project", "vision", "--label-selector", selector])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--label-selector" in err and names in err
    assert server.calls == []


def test_token_for_an_unknown_project(server, capsys) -> None:
    assert main(["admin", "token", "create", "--project", "ghost"]) == 1
    assert "project ghost does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- hosts


def test_host_list(server, capsys) -> None:
    assert main(["admin", "host", "list"]) == 0
    table = rows(capsys.readouterr().out)
    assert table["HOST"] == [
        "STATE",
        "FLAVOR",
        "GPUS FREE",
        "GPU UTIL",
        "CPUS FREE",
        "DISK FREE",
        "NOTEBOOKS",
        "SSH",
        "HEARTBEAT",
    ]
    # Two of gpu-a's eight GPUs at 87%, the rest idle: the mean, and the busiest.
    assert table["gpu-a"][:7] == [
        "ready",
        "h100-1-gpu",
        "H100 6/8",
        "22% (max 87%)",
        "72/96",
        "1.2 TB/3.8 TB",
        "1",
    ]
    assert table["gpu-a"][7] == "gpu-a.example.com:2222"
    assert re.fullmatch(r"\d+s ago", table["gpu-a"][8])
    # An agent that reports no disk figures, and offers no SSH.
    assert table["gpu-b"][:8] == [
        "cordoned",
        "mixed",
        "H100 0/2, L4 0/2",
        "0%",
        "64/64",
        "-",
        "2",
        "-",
    ]
    assert re.fullmatch(r"\d+m ago", table["gpu-b"][8])
    assert table["cpu-1"][2:5] == ["- (NVML: driver not loaded)", "-", "28/32"]


def test_host_list_says_which_hosts_take_no_notebooks_for_want_of_disk(server, capsys) -> None:
    assert main(["admin", "host", "list"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert table["cpu-1"][0] == "ready (blocked)"
    assert table["cpu-1"][5] == "3.2 GB/500.0 GB"
    assert table["gpu-a"][0] == "ready"
    notes = out.split("\n\n", 1)[1].splitlines()
    assert notes == [
        "cpu-1: no new notebooks: workspace disk nearly full (3.2 GB free of 500.0 GB; "
        "25.0 GB must stay free)"
    ]


def test_host_list_without_blocked_hosts_has_no_notes(server, capsys) -> None:
    server.fleet.hosts["cpu-1"].placement_blocked = ""
    assert main(["admin", "host", "list"]) == 0
    out = capsys.readouterr().out
    assert "no new notebooks" not in out and "\n\n" not in out


def test_host_list_json(server, capsys) -> None:
    assert main(["admin", "host", "list", "-o", "json"]) == 0
    hosts = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hosts] == ["gpu-a", "gpu-b", "cpu-1"]
    assert hosts[0]["gpu_models"] == [{"model": "H100", "total": 8, "free": 6}]
    assert hosts[2]["disk"] == {"free_bytes": 3_200_000_000, "total_bytes": 500_000_000_000}
    assert hosts[2]["placement_blocked"].startswith("workspace disk nearly full")
    assert hosts[1]["disk"] is None


@pytest.mark.parametrize(
    "action, host, printed",
    [
        ("drain", "gpu-a", "host gpu-a: draining (1 notebook(s) still leaving)"),
        ("drain", "cpu-1", "host cpu-1: cordoned (no new notebooks)"),
        ("cordon", "gpu-a", "host gpu-a: cordoned (no new notebooks; the 1 on it keep running)"),
        ("uncordon", "gpu-b", "host gpu-b: ready"),
        (
            "uncordon",
            "cpu-1",
            "host cpu-1: ready, but no new notebooks: workspace disk nearly full (3.2 GB free "
            "of 500.0 GB; 25.0 GB must stay free)",
        ),
    ],
)
def test_host_state_changes_print_the_new_state(server, capsys, action, host, printed) -> None:
    assert main(["admin", "host", action, host]) == 0
    assert server.calls[0][:2] == ("POST", f"/v1/admin/hosts/{host}/{action}")
    assert capsys.readouterr().out == printed + "\n"


def test_host_state_change_json(server, capsys) -> None:
    assert main(["admin", "host", "cordon", "cpu-1", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cordoned"


def test_host_state_change_of_an_unknown_host(server, capsys) -> None:
    assert main(["admin", "host", "drain", "ghost"]) == 1
    assert "host ghost does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- rendering


def _host(**fields) -> wire.Host:
    base = dict(
        id="h",
        state="ready",
        cpus=8,
        cpus_free=8,
        memory_mb=1,
        gpus=[],
        last_heartbeat=100.0,
        agent_url="http://h",
        registered_at=1.0,
    )
    return wire.Host(**{**base, **fields})


def test_host_gpus_counts_the_gpu_list_when_the_scheduler_sends_no_models() -> None:
    gpus = [
        wire.HostGpu("G0", "A100", 0, 1, 0, 0, notebook="nb"),
        wire.HostGpu("G1", "A100", 1, 1, 0, 0),
        wire.HostGpu("G2", "L4", 2, 1, 0, 0),
    ]
    assert output.host_gpus(_host(gpus=gpus)) == "A100 1/2, L4 1/1"
    assert output.host_gpus(_host()) == "-"


def test_heartbeat_age_from_a_clock_slightly_ahead_is_zero() -> None:
    assert output.host_rows([_host(last_heartbeat=102.0)], now=100.0)[0][-1] == "0s ago"
    assert output.host_rows([_host(last_heartbeat=97.0)], now=100.0)[0][-1] == "3s ago"
