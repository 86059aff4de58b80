"""The --volume parser and `nbfleet datastore`, against a stand-in scheduler on loopback."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from cli.volumes import VolumeSyntaxError, format_volume, parse_volume
from common import wire
from tests.fakes.stand_in_scheduler import cli_against


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "datasets@lab-s3/imagenet:/workspace/data:rw",
            wire.Volume("datasets", "lab-s3", "/workspace/data", "imagenet", "rw"),
        ),
        ("models@s3:/models", wire.Volume("models", "s3", "/models", "", "ro")),
        ("b.k-1@s3/a/b/c:/mnt/x:rwd", wire.Volume("b.k-1", "s3", "/mnt/x", "a/b/c", "rwd")),
        ("bkt@s3/with:colon:/mnt/x:ro", wire.Volume("bkt", "s3", "/mnt/x", "with:colon", "ro")),
    ],
)
def test_parse_volume(text: str, expected: wire.Volume) -> None:
    assert parse_volume(text) == expected
    assert parse_volume(format_volume(expected)) == expected


@pytest.mark.parametrize(
    "text, names",
    [
        ("datasets:/mnt/x", "missing '@'"),
        ("datasets@lab-s3", "missing ':/mount/path'"),
        ("datasets@lab-s3:relative", "missing ':/mount/path'"),
        ("@lab-s3:/mnt/x", "container (bucket name) is empty"),
        ("datasets@:/mnt/x", "datastore alias is empty"),
        ("datasets@lab-s3:/mnt/x:rx", "permission 'rx'"),
        ("Data_Sets@lab-s3:/mnt/x", "invalid container (bucket name) 'Data_Sets'"),
        ("datasets@Lab S3:/mnt/x", "invalid datastore alias 'Lab S3'"),
        ("datasets@lab-s3/../up:/mnt/x", "invalid prefix '../up'"),
        ("datasets@lab-s3:/mnt/../etc", "invalid mount path '/mnt/../etc'"),
        ("datasets@lab-s3:/mnt/sp ace", "invalid mount path '/mnt/sp ace'"),
    ],
)
def test_parse_volume_names_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(VolumeSyntaxError) as failure:
        parse_volume(text)
    message = str(failure.value)
    assert names in message and text in message
    assert "container@alias[/prefix]:/mount/path[:ro|rw|rwd]" in message


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    yield stand_in
    stand_in.close()


STORE = {"alias": "lab-s3", "endpoint": "https://s3.lab:9000", "region": "eu", "created_at": 1.0}


def test_datastore_add_with_flags(server, capsys) -> None:
    server.replies[("POST", "/v1/datastores")] = (201, STORE)
    argv = ["datastore", "add", "lab-s3", "--endpoint", "https://s3.lab:9000", "--region", "eu"]
    code = main([*argv, "--access-key", "AK", "--secret-key", "SK"])
    assert code == 0
    method, path, _, body = server.calls[0]
    assert (method, path) == ("POST", "/v1/datastores")
    assert json.loads(body) == {
        "alias": "lab-s3",
        "endpoint": "https://s3.lab:9000",
        "access_key": "AK",
        "secret_key": "SK",
        "region": "eu",
    }
    out = capsys.readouterr().out
    assert "lab-s3 added" in out and "SK" not in out


def test_datastore_add_reads_keys_from_the_environment(server, monkeypatch) -> None:
    server.replies[("POST", "/v1/datastores")] = (201, STORE)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENV-AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENV-SK")
    assert main(["datastore", "add", "lab-s3", "--endpoint", "https://s3.lab:9000"]) == 0
    sent = json.loads(server.calls[0][3])
    assert (sent["access_key"], sent["secret_key"], sent["region"]) == (
        "ENV-AK",
        "ENV-SK",
        "us-east-1",
    )
    # A flag wins over the environment.
    main(["datastore", "add", "x", "--endpoint", "https://e", "--access-key", "FLAG"])
    assert json.loads(server.calls[1][3])["access_key"] == "FLAG"


def test_datastore_add_without_keys_is_a_usage_error(server, capsys) -> None:
    assert main(["datastore", "add", "lab-s3", "--endpoint", "https://e"]) == 2
    assert server.calls == []
    assert "--access-key and --secret-key" in capsys.readouterr().err


def test_datastore_list_and_delete(server, capsys) -> None:
    server.replies[("GET", "/v1/datastores")] = (200, {"items": [STORE]})
    server.replies[("DELETE", "/v1/datastores/lab-s3")] = (200, STORE)
    server.replies[("DELETE", "/v1/datastores/used")] = (
        409,
        {"code": "conflict", "message": "datastore used is used by notebook(s) nb1; delete..."},
    )
    assert main(["datastore", "list"]) == 0
    out = capsys.readouterr().out
    assert "ALIAS" in out and "https://s3.lab:9000" in out
    assert main(["datastore", "list", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["alias"] == "lab-s3"
    assert main(["datastore", "delete", "lab-s3"]) == 0
    assert "lab-s3 deleted" in capsys.readouterr().out
    assert main(["datastore", "delete", "used"]) == 1
    assert "used by notebook(s) nb1" in capsys.readouterr().err


def test_notebook_run_sends_volumes(server) -> None:
    nb = {
        "id": "n1",
        "project": "p",
        "name": "nb",
        "framework": "conda",
        "editor": "jupyterlab",
        "image": "i",
        "state": "STARTING",
        "state_reason": "placed",
        "state_at": 1.0,
        "gpu": 0,
        "cpu": 1,
        "memory_mb": 1,
        "labels": {},
        "envvars": {},
        "created_at": 1.0,
        "generation": 1,
    }
    server.replies[("POST", "/v1/notebooks")] = (201, nb)
    code = main(
        [
            "notebook",
            "run",
            "conda",
            "jupyterlab",
            "--volume",
            "datasets@lab-s3/imagenet:/workspace/data:rw",
            "--volume",
            "models@lab-s3:/models",
            "-o",
            "json",
        ]
    )
    assert code == 0
    sent = json.loads(server.calls[0][3])
    assert sent["volumes"] == [
        {
            "container": "datasets",
            "alias": "lab-s3",
            "mount_path": "/workspace/data",
            "prefix": "imagenet",
            "permission": "rw",
        },
        {
            "container": "models",
            "alias": "lab-s3",
            "mount_path": "/models",
            "prefix": "",
            "permission": "ro",
        },
    ]


def test_bad_volume_is_a_usage_error_naming_the_part(server, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["notebook", "run", "conda", "jupyterlab", "--volume", "datasets@s3:/m:rx"])
    assert exit_.value.code == 2
    assert "permission 'rx'" in capsys.readouterr().err
    assert server.calls == []
