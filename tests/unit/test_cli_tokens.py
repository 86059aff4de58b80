"""`nbfleet token create|list|delete` against the stand-in's canned project tokens."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from tests.fakes.stand_in_scheduler import cli_against
from tests.unit.test_cli_usage import rows


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    stand_in.serve_fleet()
    yield stand_in
    stand_in.close()


def test_create_sends_role_selector_and_description_and_shows_the_secret_once(
    server, capsys
) -> None:
    argv = ["token", "create", "--role", "read", "--label-selector", "team=nlp"]
    argv += ["--label-selector", "env=dev", "--description", "for the reviewers"]
    assert main(argv) == 0
    method, path, authz, body = server.calls[0]
    assert (method, path, authz) == ("POST", "/v1/tokens", "Bearer nbf_test")
    assert json.loads(body) == {
        "role": "read",
        "description": "for the reviewers",
        "label_selector": {"team": "nlp", "env": "dev"},
    }
    out = capsys.readouterr().out
    assert "token tok-3 for project vision (read); shown once, keep it:" in out
    assert "\nnbf_Zk4pQ8vN2rT6wY1s\n" in out
    assert "reaches only notebooks labelled env=dev, team=nlp" in out


def test_create_defaults_to_a_read_token(server, capsys) -> None:
    assert main(["token", "create", "-o", "json"]) == 0
    assert json.loads(server.calls[0][3])["role"] == "read"
    assert json.loads(capsys.readouterr().out)["token"].startswith("nbf_")


def test_create_refuses_a_bad_role_or_selector_before_sending(server, capsys) -> None:
    for argv in (
        ["token", "create", "--role", "admin"],
        ["token", "create", "--label-selector", "team"],
        ["token", "create", "--label-selector", "team=n l p"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert server.calls == []
    assert "--label-selector" in capsys.readouterr().err


def test_list_shows_tokens_without_secrets(server, capsys) -> None:
    assert main(["token", "list"]) == 0
    table = rows(capsys.readouterr().out)
    assert table["ID"] == ["ROLE", "LABEL SELECTOR", "DESCRIPTION", "CREATED"]
    assert table["tok-1"][:3] == ["operator", "-", "ci pipeline"]
    assert table["tok-2"][:3] == ["read", "team=cv", "-"]


def test_a_created_token_is_listed_and_a_deleted_one_is_gone(server, capsys) -> None:
    assert main(["token", "create", "--role", "operator"]) == 0
    assert main(["token", "delete", "tok-1"]) == 0
    assert "token tok-1 (operator) deleted" in capsys.readouterr().out
    assert main(["token", "list", "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["id"], t["role"]) for t in listed] == [("tok-2", "read"), ("tok-3", "operator")]
    assert all("token" not in t for t in listed)

    assert main(["token", "delete", "tok-1"]) == 1
    assert "token tok-1 does not exist" in capsys.readouterr().err


def test_admin_token_create_still_names_the_project(server, capsys) -> None:
    argv = ["admin", "token", "create", "--project", "nlp", "--role", "read"]
    assert main(argv) == 0
    assert server.calls[0][:2] == ("POST", "/v1/admin/tokens")
    assert "for project nlp (read); shown once" in capsys.readouterr().out
