"""The CLI against a stand-in scheduler on loopback: request shape, output, errors, exit codes."""

import json
import re
import time

import pytest

from cli.main import main
from tests.fakes.stand_in_scheduler import cli_against

NOTEBOOK = {
    "id": "6f1c",
    "project": "default",
    "name": "nb",
    "framework": "conda",
    "editor": "jupyterlab",
    "image": "nbfleet/conda:latest",
    "state": "RUNNING",
    "state_reason": "editor answers",
    "state_at": 1.0,
    "gpu": 1,
    "cpu": 4,
    "memory_mb": 1024,
    "labels": {"team": "cv"},
    "envvars": {},
    "created_at": 1.0,
    "generation": 1,
    "host": "host-a",
    "gpus": [{"uuid": "GPU-1", "model": "NVIDIA H100", "index": 0}],
    "url": "http://127.0.0.1:5555/lab?token=t",
    "history": [{"state": "STARTING", "reason": "placed on host-a", "at": 1.0, "generation": 1}],
}


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    yield stand_in
    stand_in.close()


def test_run_sends_the_request_and_prints_json(server, capsys):
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    code = main(
        [
            "notebook",
            "run",
            "conda",
            "jupyterlab",
            "--gpu",
            "1",
            "--label",
            "team=cv",
            "--envvar",
            "SEED=1",
            "-o",
            "json",
        ]
    )
    assert code == 0
    method, path, authz, body = server.calls[0]
    assert (method, path, authz) == ("POST", "/v1/notebooks", "Bearer nbf_test")
    sent = json.loads(body)
    assert sent["framework"] == "conda" and sent["gpu"] == 1
    assert sent["labels"] == {"team": "cv"} and sent["envvars"] == {"SEED": "1"}
    assert json.loads(capsys.readouterr().out)["id"] == "6f1c"


def test_get_shows_url_gpus_and_history(server, capsys):
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, NOTEBOOK)
    assert main(["notebook", "get", "6f1c"]) == 0
    out = capsys.readouterr().out
    for expected in [
        "RUNNING",
        "host-a",
        "GPU-1",
        "http://127.0.0.1:5555/lab?token=t",
        "History:",
        "placed on host-a",
    ]:
        assert expected in out


def test_get_shows_each_gpus_utilization_and_memory_as_last_reported(server, capsys):
    gpus = [
        {
            "uuid": "GPU-1",
            "model": "NVIDIA H100",
            "index": 0,
            "utilization_pct": 87,
            "memory_used_mb": 31_948,
            "memory_total_mb": 81_559,
        },
        # Reserved, but its host has not reported figures since.
        {"uuid": "GPU-2", "model": "NVIDIA H100", "index": 1},
    ]
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, {**NOTEBOOK, "gpus": gpus})
    assert main(["notebook", "get", "6f1c"]) == 0
    out = capsys.readouterr().out
    assert "GPU-1 (NVIDIA H100): 87% busy, 31.2/79.6 GiB used; GPU-2 (NVIDIA H100)" in out, out


def test_run_asks_for_an_idle_timeout(server, capsys):
    server.replies[("POST", "/v1/notebooks")] = (201, {**NOTEBOOK, "idle_timeout_s": 1800.0})
    assert main(["notebook", "run", "conda", "jupyterlab", "--idle-timeout", "30m"]) == 0
    assert json.loads(server.calls[0][3])["idle_timeout_s"] == 1800
    assert "Idle timeout:       30 min (asked)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "idle, shown",
    [
        (
            {"last_active_at": 1.0, "signal": "kernel busy", "idle_s": 120.0, "timeout_s": 3600},
            "Activity:           active 2 min ago (kernel busy), stops after 60 min idle; "
            "2.0 KB proxied",
        ),
        (
            {"last_active_at": 1.0, "signal": "kernel", "idle_s": 2520.0, "timeout_s": 3600},
            "Activity:           idle for 42 min (last: kernel), stops at 60 min; 2.0 KB proxied",
        ),
        (
            {"last_active_at": 1.0, "signal": "GPU 87%", "idle_s": 5.0, "timeout_s": None},
            "Activity:           active 5 s ago (GPU 87%), no idle timeout; 2.0 KB proxied",
        ),
        (
            # Half of a short timeout gone reads as idle already.
            {"last_active_at": 1.0, "signal": "started", "idle_s": 200.0, "timeout_s": 300},
            "Activity:           idle for 3 min (last: started), stops at 5 min; 2.0 KB proxied",
        ),
    ],
)
def test_get_shows_the_idle_signal(server, capsys, idle, shown):
    body = {**NOTEBOOK, "idle": idle, "proxied_bytes": 2048, "last_activity_at": 1.0}
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, body)
    assert main(["notebook", "get", "6f1c"]) == 0
    assert shown in capsys.readouterr().out


def test_a_reader_that_goes_away_ends_the_command_quietly(server, monkeypatch, capsys):
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, NOTEBOOK)

    def closed_pipe(*_args, **_kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("cli.output.notebook_detail", closed_pipe)
    assert main(["notebook", "get", "6f1c"]) == 141
    assert capsys.readouterr().err == ""


def test_server_error_message_is_shown_with_exit_1(server, capsys):
    assert main(["notebook", "get", "nope"]) == 1
    assert "notebook nope does not exist" in capsys.readouterr().err


def test_malformed_label_is_a_usage_error(server, capsys):
    with pytest.raises(SystemExit) as info:
        main(["notebook", "run", "conda", "jupyterlab", "--label", "novalue"])
    assert info.value.code == 2
    assert "--label must look like KEY=VALUE" in capsys.readouterr().err
    assert server.calls == []


def test_missing_token_is_explained(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("NBFLEET_TOKEN", raising=False)
    monkeypatch.delenv("NBFLEET_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["notebook", "list"]) == 2
    assert "no token" in capsys.readouterr().err


def test_unreachable_scheduler_is_explained(monkeypatch, capsys):
    monkeypatch.setenv("NBFLEET_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NBFLEET_TOKEN", "x")
    assert main(["notebook", "list"]) == 1
    assert "cannot reach the scheduler" in capsys.readouterr().err


def test_config_file(monkeypatch, tmp_path, server, capsys):
    monkeypatch.delenv("NBFLEET_TOKEN")
    monkeypatch.delenv("NBFLEET_URL")
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'url = "{server.url}"\ntoken = "nbf_file"\n')
    monkeypatch.setenv("NBFLEET_CONFIG", str(cfg))
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [NOTEBOOK]})
    assert main(["notebook", "list"]) == 0
    assert server.calls[0][2] == "Bearer nbf_file"
    assert "6f1c" in capsys.readouterr().out


@pytest.mark.parametrize("before", [True, False])
def test_token_and_url_flags_work_before_or_after_the_subcommand(server, monkeypatch, before):
    url = server.url
    monkeypatch.setenv("NBFLEET_URL", "http://127.0.0.1:9")  # the flag must win
    server.replies[("GET", "/v1/admin/hosts")] = (200, {"items": []})
    flags = ["--token", "nba_flag", "--url", url]
    argv = flags + ["admin", "host", "list"] if before else ["admin", "host", "list"] + flags
    assert main(argv) == 0
    assert server.calls[0][:3] == ("GET", "/v1/admin/hosts", "Bearer nba_flag")


def test_backup_list_shows_time_size_and_files(server, capsys):
    items = [
        {
            "id": "20261121T2015Z-ab",
            "created_at": 1.0,
            "kind": "checkpoint",
            "files": 12034,
            "logical_bytes": 1_500_000_000,
            "stored_bytes": 600_000_000,
        },
    ]
    server.replies[("GET", "/v1/notebooks/6f1c/backups")] = (200, {"items": items})
    assert main(["notebook", "backup", "list", "6f1c"]) == 0
    out = capsys.readouterr().out
    for text in ["20261121T2015Z-ab", "checkpoint", "12,034", "1.5 GB", "600.0 MB"]:
        assert text in out


def test_fork_sends_backup_and_overrides(server, capsys):
    server.replies[("POST", "/v1/notebooks/6f1c/fork")] = (201, NOTEBOOK)
    argv = ["notebook", "fork", "6f1c", "--backup", "s1", "--name", "exp2", "-o", "json"]
    assert main(argv) == 0
    sent = json.loads(server.calls[0][3])
    assert sent == {
        "backup": "s1",
        "name": "exp2",
        "gpu": None,
        "cpu": None,
        "labels": None,
        "ssh_public_keys": [],
    }


def test_get_shows_progress_and_workspace_size(server, capsys):
    nb = dict(
        NOTEBOOK,
        state="STARTING",
        progress={
            "phase": "restore",
            "files_done": 412,
            "files_total": 1030,
            "bytes_done": 40_100_000,
            "bytes_total": 100_200_000,
            "at": 1.0,
        },
        workspace={
            "id": "s9",
            "created_at": 1.0,
            "kind": "stop",
            "files": 1030,
            "logical_bytes": 100_200_000,
            "stored_bytes": 30_000_000,
        },
    )
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, nb)
    assert main(["notebook", "get", "6f1c"]) == 0
    out = capsys.readouterr().out
    assert "restoring workspace 40% (412 of 1,030 files, 40.1 MB of 100.2 MB)" in out
    assert "100.2 MB in 1,030 files, 30.0 MB stored (backup s9" in out
    assert "Disk use:           not measured yet on host-a\n" in out


def test_get_shows_the_workspace_disk_use_on_the_host_next_to_the_stored_size(server, capsys):
    nb = dict(
        NOTEBOOK,
        workspace={
            "id": "s9",
            "created_at": 1.0,
            "kind": "checkpoint",
            "files": 1030,
            "logical_bytes": 100_200_000,
            "stored_bytes": 30_000_000,
        },
        workspace_used_bytes=1_234_000_000,
        workspace_used_at=time.time() - 125,
    )
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, nb)
    assert main(["notebook", "get", "6f1c"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Workspace:"))
    assert "30.0 MB stored" in lines[at]
    assert re.fullmatch(r"Disk use: +1\.2 GB on host-a \(measured 2m ago\)", lines[at + 1])


def test_get_of_a_notebook_off_any_host_shows_no_disk_use(server, capsys):
    nb = dict(NOTEBOOK, state="STOPPED", host=None, url=None)
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, nb)
    assert main(["notebook", "get", "6f1c"]) == 0
    assert "Disk use" not in capsys.readouterr().out


def test_run_asks_for_a_framework_version(server):
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    run = ["notebook", "run", "huggingface", "jupyterlab"]
    assert main([*run, "--framework-version", "4.57"]) == 0
    sent = json.loads(server.calls[0][3])
    assert (sent["framework"], sent["framework_version"]) == ("huggingface", "4.57")
    # Without it the scheduler picks the newest.
    assert main(run) == 0
    assert json.loads(server.calls[1][3])["framework_version"] is None


def test_catalog_shows_each_version_and_what_its_image_holds(server, capsys):
    hf = {"name": "huggingface", "image": "nbfleet/huggingface:5.18", "editors": ["jupyterlab"]}
    contents = {
        "code-server": "4.89.1",
        "jupyterlab": "4.6.6",
        "python": "3.11.2",
        "transformers": "5.18.0",
        "torch": "2.13.0+cpu",
    }
    hf["versions"] = [
        {"version": "5.18", "image": "nbfleet/huggingface:5.18", "contents": contents, "hosts": 2},
        {"version": "4.57", "image": "nbfleet/huggingface:4.57"},
    ]
    server.replies[("GET", "/v1/catalog")] = (200, {"frameworks": [hf], "editors": []})
    assert main(["catalog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["FRAMEWORK", "VERSION", "EDITORS", "IMAGE", "HOSTS", "CONTENTS"]
    newest = re.split(r"\s{2,}", lines[1].strip())
    assert newest == [
        "huggingface",
        "5.18 (default)",
        "jupyterlab",
        "nbfleet/huggingface:5.18",
        "2",
        "python 3.11.2, torch 2.13.0+cpu, transformers 5.18.0,",
    ]
    # What the image holds goes on below, Python first and the editors last, never a name
    # apart from its version.
    assert lines[2].strip() == "jupyterlab 4.6.6, code-server 4.89.1"
    assert lines[2].index("jupyterlab") == lines[1].index("python")
    older = re.split(r"\s{2,}", lines[3].strip())
    assert older == ["4.57", "nbfleet/huggingface:4.57", "0", "(no host has reported this image)"]


def test_update_edits_labels_and_env_one_key_at_a_time(server, capsys):
    current = {**NOTEBOOK, "labels": {"team": "cv", "old": "x"}, "envvars": {"SEED": "1"}}
    server.replies[("GET", "/v1/notebooks/6f1c")] = (200, current)
    updated = {**current, "pending_restart": ["envvars"]}
    server.replies[("PUT", "/v1/notebooks/6f1c")] = (200, updated)
    argv = ["notebook", "update", "6f1c", "--label", "stage=dev", "--unset-label", "old"]
    argv += ["--envvar", "MODE=fast", "--no-unsecure-http", "--idle-timeout", "off"]
    assert main(argv) == 0
    method, path, _, body = server.calls[-1]
    assert (method, path) == ("PUT", "/v1/notebooks/6f1c")
    assert json.loads(body) == {
        "labels": {"team": "cv", "stage": "dev"},
        "unsecure_http": False,
        "idle_timeout_s": None,
        "envvars": {"SEED": "1", "MODE": "fast"},
    }
    captured = capsys.readouterr()
    assert "Waiting for a restart: envvars" in captured.out
    assert "gets them at its next start" in captured.err


def test_update_sends_only_what_is_given_and_refuses_nothing_or_contradictions(server, capsys):
    server.replies[("PUT", "/v1/notebooks/6f1c")] = (200, NOTEBOOK)
    assert main(["notebook", "update", "6f1c", "--gpu", "2", "--framework-version", "2.13"]) == 0
    assert json.loads(server.calls[-1][3]) == {"gpu": 2, "framework_version": "2.13"}
    assert main(["notebook", "update", "6f1c", "--clear-volumes", "--clear-ssh-keys"]) == 0
    assert json.loads(server.calls[-1][3]) == {"ssh_public_keys": [], "volumes": []}
    calls = len(server.calls)
    assert main(["notebook", "update", "6f1c"]) == 2
    assert "nothing to change" in capsys.readouterr().err
    assert main(["notebook", "update", "6f1c", "--unset-label", "nope"]) != 0
    assert len(server.calls) == calls + 1  # the GET, never a PUT
