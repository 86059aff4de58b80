"""The CLI's issue-5 commands against the stand-in: public notebooks, access and activity in
`get`, `logs --follow` printing as output arrives, and `exec` with the command's exit code."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest

from cli.main import main, split_command
from common import wire
from tests.fakes.stand_in_scheduler import Stream, Text, cli_against, error, payload
from tests.unit.test_cli import NOTEBOOK
from tests.unit.test_cli_usage import rows

NB = "6f1c"


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    yield stand_in
    stand_in.close()


def test_run_unsecure_http_asks_for_a_public_notebook(server, capsys) -> None:
    server.replies[("POST", "/v1/notebooks")] = (201, {**NOTEBOOK, "unsecure_http": True})
    assert main(["notebook", "run", "conda", "jupyterlab", "--unsecure-http"]) == 0
    assert json.loads(server.calls[0][3])["unsecure_http"] is True
    assert "public (--unsecure-http)" in capsys.readouterr().out

    assert main(["notebook", "run", "conda", "jupyterlab"]) == 0
    assert json.loads(server.calls[1][3])["unsecure_http"] is False


def test_get_shows_access_and_editor_activity(server, capsys) -> None:
    url = f"http://scheduler:8470/notebooks/{NB}/"
    used = {
        **NOTEBOOK,
        "url": url,
        "last_activity_at": time.time() - 150,
        "proxied_bytes": 2_500_000,
    }
    server.replies[("GET", f"/v1/notebooks/{NB}")] = (200, used)
    assert main(["notebook", "get", NB]) == 0
    out = capsys.readouterr().out
    assert "URL:" in out and url in out
    assert "project token (read or operator" in out
    assert "last active 2m ago, 2.5 MB proxied" in out

    server.replies[("GET", f"/v1/notebooks/{NB}")] = (200, NOTEBOOK)
    assert main(["notebook", "get", NB]) == 0
    assert rows(capsys.readouterr().out)["Activity:"] == ["none yet"]


# ---------------------------------------------------------------- logs


class Recorder(io.StringIO):
    """stdout that remembers when each write happened, for the stand-in's thread to see."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            return super().write(text)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()


def test_logs_follow_prints_each_piece_before_the_next_arrives(server, monkeypatch) -> None:
    out = Recorder()
    monkeypatch.setattr("sys.stdout", out)
    printed_before: list[str] = []

    def before(i: int) -> None:
        # Wait (with a deadline) until the CLI has printed everything sent so far.
        expected = "".join(c.decode() for c in chunks[:i])
        deadline = time.monotonic() + 5
        while out.text() != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        printed_before.append(out.text())

    chunks = [b"starting\n", b"Jupyter is ready\n", b"kernel started\n"]
    stream = Stream(chunks, before)
    server.replies[("GET", f"/v1/notebooks/{NB}/logs")] = (200, stream)
    assert main(["notebook", "logs", NB, "--follow", "--tail", "10"]) == 0
    assert printed_before == ["", "starting\n", "starting\nJupyter is ready\n"]
    assert out.text() == "".join(c.decode() for c in chunks)
    method, path, authz, _ = server.calls[0]
    assert (method, authz) == ("GET", "Bearer nbf_test")
    assert path == f"/v1/notebooks/{NB}/logs?tail=10&follow=1"


def test_logs_follow_keeps_a_character_split_between_chunks(server, capsys) -> None:
    stream = Stream(["café ☕\n".encode()[:4], "café ☕\n".encode()[4:9], "café ☕\n".encode()[9:]])
    server.replies[("GET", f"/v1/notebooks/{NB}/logs")] = (200, stream)
    assert main(["notebook", "logs", NB, "-f"]) == 0
    assert capsys.readouterr().out == "café ☕\n"


def test_logs_follow_of_a_notebook_without_host_says_why(server, capsys) -> None:
    server.replies[("GET", f"/v1/notebooks/{NB}/logs")] = error(
        409, "conflict", f"notebook {NB} is QUEUED and has never run on a host; it has no logs"
    )
    assert main(["notebook", "logs", NB, "--follow"]) == 1
    assert "has never run on a host" in capsys.readouterr().err


def test_logs_without_follow_prints_the_text(server, capsys) -> None:
    server.replies[("GET", f"/v1/notebooks/{NB}/logs")] = (200, Text("line 1\nline 2\n"))
    assert main(["notebook", "logs", NB]) == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"
    assert server.calls[0][1] == f"/v1/notebooks/{NB}/logs?tail=200"


# ---------------------------------------------------------------- exec


def test_exec_sends_the_command_verbatim_and_exits_with_its_code(server, capsys) -> None:
    result = wire.ExecResult(exit_code=3, output="hello\nwarning on stderr\n")
    server.replies[("POST", f"/v1/notebooks/{NB}/exec")] = (200, payload(result))
    argv = ["notebook", "exec", NB, "--timeout", "5", "--", "sh", "-c", "echo hello --x; exit 3"]
    assert main(argv) == 3
    method, path, _, body = server.calls[0]
    assert (method, path) == ("POST", f"/v1/notebooks/{NB}/exec")
    assert json.loads(body) == {"command": ["sh", "-c", "echo hello --x; exit 3"], "timeout_s": 5}
    assert capsys.readouterr().out == "hello\nwarning on stderr\n"


def test_exec_options_go_before_the_separator_and_the_command_keeps_its_own(server) -> None:
    result = wire.ExecResult(exit_code=0, output="")
    server.replies[("POST", f"/v1/notebooks/{NB}/exec")] = (200, payload(result))
    argv = ["notebook", "exec", "--timeout", "9", NB, "--", "python", "--", "-v", "--timeout"]
    assert main(argv) == 0
    assert json.loads(server.calls[0][3]) == {
        "command": ["python", "--", "-v", "--timeout"],
        "timeout_s": 9,
    }


def test_exec_reports_truncated_output_and_json(server, capsys) -> None:
    result = wire.ExecResult(exit_code=0, output="x" * 10, truncated=True)
    server.replies[("POST", f"/v1/notebooks/{NB}/exec")] = (200, payload(result))
    assert main(["notebook", "exec", NB, "-o", "json", "--", "yes"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["truncated"] is True
    assert "output truncated" in captured.err


def test_exec_refusals_and_usage_errors(server, capsys) -> None:
    server.replies[("POST", f"/v1/notebooks/{NB}/exec")] = error(
        409, "conflict", f"notebook {NB} is STOPPED; commands run only in a RUNNING notebook"
    )
    assert main(["notebook", "exec", NB, "--", "ls"]) == 1
    assert "commands run only in a RUNNING notebook" in capsys.readouterr().err

    server.calls.clear()
    for argv in (["notebook", "exec", NB], ["notebook", "exec", NB, "--"]):
        assert main(argv) == 2
        assert "needs a command after `--`" in capsys.readouterr().err
    assert server.calls == []


def test_split_command_only_splits_exec() -> None:
    assert split_command(["nb", "exec", "x", "--", "a", "--", "b"]) == (
        ["nb", "exec", "x"],
        ["a", "--", "b"],
    )
    assert split_command(["notebook", "get", "--", "x"]) == (["notebook", "get", "--", "x"], [])
