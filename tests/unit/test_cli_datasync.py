"""`nbfleet notebook datasync` against a stand-in scheduler on loopback: the request it sends,
progress on stderr as the stream comes, the summary per volume, and its exit status."""

from __future__ import annotations

import json
import time

import pytest

from cli.main import main
from common import wire
from tests.fakes.stand_in_scheduler import Stream, cli_against, error
from tests.unit.test_cli_editor import Recorder

PATH = "/v1/notebooks/nb-1/datasync"


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    yield stand_in
    stand_in.close()


def line(event: wire.DatasyncProgress | wire.DatasyncResult) -> bytes:
    return wire.encode(event) + b"\n"


def progress(done: int, total: int) -> wire.DatasyncProgress:
    return wire.DatasyncProgress(
        progress=wire.Progress(
            phase="volumes-push",
            files_done=done,
            files_total=total,
            bytes_done=done * 1000,
            bytes_total=total * 1000,
            at=1_790_000_000.0,
            detail="datasync datasets@lab/set:/mnt/data",
        )
    )


RESULT = wire.DatasyncResult(
    notebook="nb-1",
    direction="push",
    ok=True,
    volumes=[
        wire.DatasyncVolume(
            volume="datasets@lab/set:/mnt/data:rw",
            files=2,
            bytes=2000,
            unchanged=7,
            unstable=1,
            details=["train.log: kept changing while read (4 tries); not pushed now"],
        ),
        wire.DatasyncVolume(
            volume="datasets@lab/models:/mnt/models:ro",
            skipped=1,
            details=["read-only (ro): never pushed"],
        ),
    ],
)


def test_datasync_shows_progress_as_it_comes_then_a_summary(server, monkeypatch, capsys) -> None:
    err = Recorder()
    monkeypatch.setattr("sys.stderr", err)
    printed: list[str] = []

    def before(i: int) -> None:
        # Before the second progress line is sent, the first one is on stderr already.
        if i == 1:
            deadline = time.monotonic() + 5
            while "0%" not in err.text() and time.monotonic() < deadline:
                time.sleep(0.01)
            printed.append(err.text())

    stream = Stream([line(progress(0, 2)), line(progress(2, 2)), line(RESULT)], before)
    server.replies[("POST", PATH)] = (200, stream)
    code = main(["notebook", "datasync", "nb-1", "--volume", "lab"])
    assert code == 0
    method, path, _, body = server.calls[0]
    assert (method, path) == ("POST", PATH)
    assert json.loads(body) == {"volume": "lab", "direction": "push"}
    assert "pushing volumes 0% (0 of 2 files" in printed[0]
    assert "100%" not in printed[0]
    out = capsys.readouterr().out
    assert "pushing volumes 100% (2 of 2 files" in err.text()
    assert "datasync datasets@lab/set:/mnt/data" in err.text()
    rows = out.splitlines()
    assert rows[0].split() == [
        "VOLUME",
        "UPLOADED",
        "SIZE",
        "DELETED",
        "UNCHANGED",
        "CONFLICTS",
        "UNSTABLE",
        "SKIPPED",
    ]
    assert rows[1].split()[:3] == ["datasets@lab/set:/mnt/data:rw", "2", "2.0"]
    assert "datasets@lab/set:/mnt/data:rw: train.log: kept changing" in out
    assert "datasets@lab/models:/mnt/models:ro: read-only (ro): never pushed" in out


def test_datasync_pull_as_json(server, capsys) -> None:
    result = wire.DatasyncResult(notebook="nb-1", direction="pull", ok=True)
    server.replies[("POST", PATH)] = (200, Stream([line(progress(0, 0)), line(result)]))
    assert main(["notebook", "datasync", "nb-1", "--direction", "pull", "-o", "json"]) == 0
    assert json.loads(server.calls[0][3]) == {"volume": None, "direction": "pull"}
    out, err = capsys.readouterr()
    assert json.loads(out)["direction"] == "pull" and err == ""


def test_a_failed_datasync_exits_1_with_its_error(server, capsys) -> None:
    failed = wire.DatasyncResult(
        notebook="nb-1",
        direction="push",
        ok=False,
        volumes=[wire.DatasyncVolume(volume="d@lab:/mnt/data:rw", error="upload failed: 503")],
        error="volume d@lab:/mnt/data push failed: upload failed: 503",
    )
    server.replies[("POST", PATH)] = (200, Stream([line(failed)]))
    assert main(["notebook", "datasync", "nb-1"]) == 1
    out, err = capsys.readouterr()
    assert "d@lab:/mnt/data:rw: FAILED: upload failed: 503" in out
    assert "nbfleet: datasync failed: volume d@lab:/mnt/data push failed" in err


def test_a_refusal_is_printed_with_exit_1(server, capsys) -> None:
    server.replies[("POST", PATH)] = error(
        409, "conflict", "notebook nb-1 is STOPPED; datasync runs while it is RUNNING"
    )
    assert main(["notebook", "datasync", "nb-1"]) == 1
    assert "nbfleet: notebook nb-1 is STOPPED" in capsys.readouterr().err


def test_a_stream_without_a_result_says_the_datasync_may_go_on(server, capsys) -> None:
    server.replies[("POST", PATH)] = (200, Stream([line(progress(1, 2))]))
    assert main(["notebook", "datasync", "nb-1"]) == 1
    err = capsys.readouterr().err
    assert "without a result" in err and "nbfleet notebook get nb-1" in err
