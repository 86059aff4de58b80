"""`nbfleet notebook ... --ssh-public-keys`, `ssh-keys`, `ssh`, `ssh-config` and `ssh-proxy`
against a stand-in scheduler on loopback, with the real `ssh` and `ssh-keygen` where they
matter (a fake `ssh` on PATH where only its arguments do)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli import ssh as cli_ssh
from cli.main import main
from common.ssh import parse_public_key
from tests.fakes.stand_in_scheduler import cli_against, error
from tests.support.ssh_keys import ed25519_line, keygen
from tests.unit.test_cli import NOTEBOOK

REPO = Path(__file__).resolve().parents[2]
ADA = ed25519_line("ada", "ada@laptop")
BOB = ed25519_line("bob", "bob@desk")
NB_ID = "0b5c6f3e-7a41-4d2b-9c1e-5f8a2d7e4b10"


def key_info(line: str) -> dict[str, str]:
    key = parse_public_key(line)
    return {"type": key.type, "fingerprint": key.fingerprint, "comment": key.comment}


def notebook(**fields: Any) -> dict[str, Any]:
    return {**NOTEBOOK, "id": NB_ID, "name": "train", "ssh_keys": [key_info(ADA)], **fields}


@pytest.fixture
def server(monkeypatch, tmp_path):
    stand_in = cli_against(monkeypatch, tmp_path)
    yield stand_in
    stand_in.close()


def sent(server, index: int = 0) -> dict[str, Any]:
    return json.loads(server.calls[index][3])


def run_cli(*argv: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``nbfleet ARGV`` as its own process (for what execs or owns stdin/stdout)."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=60,
        **kwargs,
    )


# ---------------------------------------------------------------- --ssh-public-keys


def test_run_sends_keys_from_files_and_key_lines(server, tmp_path: Path) -> None:
    keys = tmp_path / "keys.pub"
    keys.write_text(f"# laptop and desk\n\n{ADA}\n  {BOB}  \n")
    carol = ed25519_line("carol", "carol@ci")
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    argv = ["notebook", "run", "conda", "jupyterlab", "--ssh-public-keys", str(keys)]
    assert main([*argv, "--ssh-public-keys", carol, "--ssh-public-keys", ADA, "-o", "json"]) == 0
    # Each key once, in order, normalized.
    assert sent(server)["ssh_public_keys"] == [ADA, BOB, carol]


def test_a_key_file_from_ssh_keygen_is_read_as_is(server, tmp_path: Path) -> None:
    pub = keygen(tmp_path, "id_ed25519", comment="ada@laptop")
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    assert main(["notebook", "run", "conda", "jupyterlab", "--ssh-public-keys", str(pub)]) == 0
    assert sent(server)["ssh_public_keys"] == [pub.read_text().strip()]


def test_a_key_file_under_home_is_found_with_a_tilde(server, tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519.pub").write_text(ADA + "\n")
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    argv = ["notebook", "run", "conda", "jupyterlab", "--ssh-public-keys", "~/.ssh/id_ed25519.pub"]
    assert main(argv) == 0
    assert sent(server)["ssh_public_keys"] == [ADA]


def test_run_without_keys_sends_none(server) -> None:
    server.replies[("POST", "/v1/notebooks")] = (201, NOTEBOOK)
    assert main(["notebook", "run", "conda", "jupyterlab"]) == 0
    assert sent(server)["ssh_public_keys"] == []


@pytest.mark.parametrize(
    ("content", "value", "says"),
    [
        (None, "~/.ssh/nope.pub", "neither a file nor an OpenSSH public key"),
        (None, "ssh-ed25519 AAAA!", "is not a usable public key: the ssh-ed25519 key's base64"),
        (None, "ssh-ed25519", "ssh-ed25519 key without its base64 part"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n", "FILE", "this is a private key"),
        (f"{ADA}\nssh-dss AAAAB3NzaC1kc3M\n", "FILE", "line 2: not a usable public key: key type"),
        ("# only a comment\n\n", "FILE", "holds no public key"),
        (b"\xff\xfe\x00", "FILE", "is not a text file of public keys"),
    ],
)
def test_something_not_a_key_is_a_usage_error_naming_the_flag(
    server, capsys, tmp_path: Path, content: str | bytes | None, value: str, says: str
) -> None:
    if content is not None:
        path = tmp_path / "given.pub"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        value = str(path)
    with pytest.raises(SystemExit) as exit_:
        main(["notebook", "run", "conda", "jupyterlab", "--ssh-public-keys", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ssh-public-keys" in err and says in err, err
    assert server.calls == []


def test_more_than_twenty_keys_is_a_usage_error(server, capsys, tmp_path: Path) -> None:
    keys = tmp_path / "many.pub"
    keys.write_text("\n".join(ed25519_line(str(i)) for i in range(21)))
    assert main(["notebook", "run", "conda", "jupyterlab", "--ssh-public-keys", str(keys)]) == 2
    assert "--ssh-public-keys: 21 keys; a notebook takes at most 20" in capsys.readouterr().err
    assert server.calls == []


def test_fork_sends_the_keys_given(server) -> None:
    server.replies[("POST", "/v1/notebooks/6f1c/fork")] = (201, NOTEBOOK)
    argv = ["notebook", "fork", "6f1c", "--backup", "s1", "--ssh-public-keys", BOB]
    assert main(argv) == 0
    assert sent(server)["ssh_public_keys"] == [BOB]


# ---------------------------------------------------------------- get and ssh-keys


def test_get_shows_the_ssh_address_and_fingerprints(server, capsys) -> None:
    nb = notebook(ssh="ssh://0b5c@gpu-a.example.com:2222", ssh_keys=[key_info(ADA), key_info(BOB)])
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, nb)
    assert main(["notebook", "get", NB_ID]) == 0
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if x.startswith("SSH:")]
    assert line.split(None, 1)[1] == (
        f"ssh://0b5c@gpu-a.example.com:2222 (`nbfleet notebook ssh {NB_ID}`)"
    )
    section = out.split("SSH keys:\n", 1)[1].splitlines()
    assert section[0].split() == ["TYPE", "FINGERPRINT", "COMMENT"]
    assert section[1].split() == ["ssh-ed25519", key_info(ADA)["fingerprint"], "ada@laptop"]
    assert section[2].split() == ["ssh-ed25519", key_info(BOB)["fingerprint"], "bob@desk"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"ssh_keys": []}, "- (no keys: `nbfleet notebook ssh-keys ID --ssh-public-keys FILE`"),
        ({"state": "STOPPED", "host": None}, "- (while RUNNING)"),
        ({}, "- (host host-a offers no SSH)"),
    ],
)
def test_get_says_why_there_is_no_ssh_address(server, capsys, fields, says) -> None:
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, notebook(**fields))
    assert main(["notebook", "get", NB_ID]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("SSH:")][0]
    assert says in line


def test_ssh_keys_replaces_the_keys(server, capsys, tmp_path: Path) -> None:
    server.replies[("PUT", f"/v1/notebooks/{NB_ID}/ssh-keys")] = (
        200,
        notebook(state="STOPPED", ssh_keys=[key_info(BOB)]),
    )
    assert main(["notebook", "ssh-keys", NB_ID, "--ssh-public-keys", BOB]) == 0
    method, path, _, body = server.calls[0]
    assert (method, path, json.loads(body)) == (
        "PUT",
        f"/v1/notebooks/{NB_ID}/ssh-keys",
        {"keys": [BOB]},
    )
    assert key_info(BOB)["fingerprint"] in capsys.readouterr().out


def test_ssh_keys_clear_sends_none(server) -> None:
    server.replies[("PUT", f"/v1/notebooks/{NB_ID}/ssh-keys")] = (200, notebook(ssh_keys=[]))
    assert main(["notebook", "ssh-keys", NB_ID, "--clear", "-o", "json"]) == 0
    assert sent(server) == {"keys": []}


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "give --ssh-public-keys FILE|KEY (repeatable), or --clear"),
        (["--clear", "--ssh-public-keys", ADA], "--clear or --ssh-public-keys, not both"),
    ],
)
def test_ssh_keys_needs_keys_or_clear(server, capsys, extra, says) -> None:
    assert main(["notebook", "ssh-keys", NB_ID, *extra]) == 2
    assert says in capsys.readouterr().err
    assert server.calls == []


def test_ssh_keys_of_a_running_notebook_prints_the_conflict(server, capsys) -> None:
    message = f"notebook {NB_ID} is RUNNING; SSH keys are changeable on a stopped notebook only"
    server.replies[("PUT", f"/v1/notebooks/{NB_ID}/ssh-keys")] = error(
        409, "conflict", message, state="RUNNING"
    )
    assert main(["notebook", "ssh-keys", NB_ID, "--ssh-public-keys", BOB]) == 1
    assert capsys.readouterr().err == f"nbfleet: {message}\n"


# ---------------------------------------------------------------- ssh


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch) -> Path:
    """An `ssh` first on PATH that writes its arguments, one a line, to the returned file and
    exits 7."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ssh-argv"
    script = bin_dir / "ssh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {shlex.quote(str(record))}\nexit 7\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.parametrize(
    ("command", "tail"),
    [([], []), (["--", "ls", "-la", "--", "x y"], ["ls", "-la", "--", "x y"])],
)
def test_ssh_becomes_ssh_with_port_alias_and_user(server, fake_ssh: Path, command, tail) -> None:
    nb = notebook(ssh=f"ssh://{NB_ID}@gpu-a.example.com:2222")
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, nb)
    done = run_cli("notebook", "ssh", NB_ID, *command)
    assert done.returncode == 7, done.stderr  # ssh's own status: nbfleet became ssh
    assert fake_ssh.read_text().splitlines() == [
        "-p",
        "2222",
        "-o",
        f"HostKeyAlias=nb-{NB_ID}",
        f"{NB_ID}@gpu-a.example.com",
        *tail,
    ]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"ssh_keys": []},
            f"notebook {NB_ID} has no SSH keys; give it some: nbfleet notebook "
            f"ssh-keys {NB_ID} --ssh-public-keys ~/.ssh/id_ed25519.pub",
        ),
        (
            {"state": "STOPPED", "host": None},
            f"notebook {NB_ID} is STOPPED, not RUNNING; start it with `nbfleet notebook start",
        ),
        ({"state": "STARTING"}, f"notebook {NB_ID} is STARTING, not RUNNING\n"),
        ({}, f"notebook {NB_ID} runs on host host-a, which offers no SSH"),
    ],
)
@pytest.mark.parametrize("action", ["ssh", "ssh-proxy"])
def test_without_an_ssh_address_ssh_and_proxy_say_why(server, capsys, fields, says, action) -> None:
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, notebook(**fields))
    assert main(["notebook", action, NB_ID]) == 1
    assert says in capsys.readouterr().err


def test_ssh_of_an_unknown_notebook(server, capsys) -> None:
    assert main(["notebook", "ssh", "nope"]) == 1
    assert "notebook nope does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- ssh-proxy


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP server on loopback that sends back what it gets and closes once the client has
    half-closed; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    # Wake the accept and wait for it before closing: an accept still pending on a closed
    # descriptor would take the connections of whatever socket gets its number next.
    listener.shutdown(socket.SHUT_RDWR)
    acceptor.join(10)
    listener.close()


def test_ssh_proxy_bridges_stdin_and_stdout_to_the_address(server, echo_server: int) -> None:
    nb = notebook(ssh=f"ssh://{NB_ID}@127.0.0.1:{echo_server}")
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, nb)
    payload = b"SSH-2.0-OpenSSH_9.2\r\n" + bytes(range(256)) * 4096  # 1 MiB, every byte value
    done = run_cli("notebook", "ssh-proxy", NB_ID, input=payload)
    assert done.returncode == 0, done.stderr
    assert done.stdout == payload
    assert done.stderr == b""


def test_ssh_proxy_to_an_address_nobody_answers(server) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    nb = notebook(ssh=f"ssh://{NB_ID}@127.0.0.1:{port}")
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, nb)
    done = run_cli("notebook", "ssh-proxy", NB_ID, input=b"")
    assert done.returncode == 1
    assert f"cannot reach the SSH server of notebook {NB_ID} at 127.0.0.1:{port}" in (
        done.stderr.decode()
    )


def test_bridge_half_closes_and_stops_at_the_servers_end(echo_server: int) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    os.write(in_write, b"hello")
    os.close(in_write)
    with socket.create_connection(("127.0.0.1", echo_server)) as sock:
        cli_ssh.bridge(sock, in_read, out_write)
    os.close(out_write)
    assert os.read(out_read, 100) == b"hello"
    os.close(in_read)
    os.close(out_read)


# ---------------------------------------------------------------- ssh-config

OTHER_ID = "7d0e9a12-3b4c-4d5e-8f60-718293a4b5c6"
THIRD_ID = "1a2b3c4d-0000-4000-8000-000000000003"


def listing() -> dict[str, Any]:
    """Four notebooks: ``train`` with keys, two called ``eval`` with keys, ``plain`` without."""
    return {
        "items": [
            notebook(),
            dict(notebook(), id=OTHER_ID, name="eval", state="STOPPED", host=None),
            dict(notebook(), id=THIRD_ID, name="eval"),
            dict(notebook(), id="no-keys", name="plain", ssh_keys=[]),
        ]
    }


def proxy_command(server, notebook_id: str) -> str:
    command = [sys.executable, "-m", "cli.main", "--url", server.url, "notebook", "ssh-proxy"]
    return shlex.join([*command, notebook_id])


def test_ssh_config_prints_one_entry_per_notebook_with_keys(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, listing())
    assert main(["notebook", "ssh-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# --- nbfleet start ---" and lines[-1] == "# --- nbfleet end ---"
    assert lines[1].startswith("# Written by `nbfleet notebook ssh-config --write` for project")
    entries = lines[2:-1]
    # By name; a name two notebooks share gives way to their ids; ``plain`` has no keys.
    assert entries == [
        f"Host nb-{THIRD_ID}",
        f"  User {THIRD_ID}",
        f"  ProxyCommand {proxy_command(server, THIRD_ID)}",
        f"  HostKeyAlias nb-{THIRD_ID}",
        "  ServerAliveInterval 30",
        f"Host nb-{OTHER_ID}",
        f"  User {OTHER_ID}",
        f"  ProxyCommand {proxy_command(server, OTHER_ID)}",
        f"  HostKeyAlias nb-{OTHER_ID}",
        "  ServerAliveInterval 30",
        "Host nb-train",
        f"  User {NB_ID}",
        f"  ProxyCommand {proxy_command(server, NB_ID)}",
        f"  HostKeyAlias nb-{NB_ID}",
        "  ServerAliveInterval 30",
    ]


def test_ssh_config_quotes_for_the_shell_and_doubles_percent(
    server, capsys, monkeypatch, tmp_path: Path
) -> None:
    config = tmp_path / "my config.toml"
    config.write_text('token = "nbf_test"\n')
    monkeypatch.setenv("NBFLEET_CONFIG", str(config))
    # A scheduler behind a path with a %-escape in it (% starts an ssh_config token).
    server.replies[("GET", "/a%20b/v1/notebooks")] = (200, {"items": [notebook()]})
    assert main(["--url", server.url + "/a%20b", "notebook", "ssh-config"]) == 0
    [proxy] = [x for x in capsys.readouterr().out.splitlines() if "ProxyCommand" in x]
    assert proxy == (
        "  ProxyCommand env 'NBFLEET_CONFIG="
        + str(config)
        + "' "
        + shlex.join([sys.executable, "-m", "cli.main"])
        + f" --url {server.url}/a%%20b notebook ssh-proxy {NB_ID}"
    )


def test_ssh_config_without_keys_anywhere(server, capsys) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [notebook(ssh_keys=[])]})
    assert main(["notebook", "ssh-config"]) == 0
    captured = capsys.readouterr()
    assert "Host " not in captured.out and "(no notebook has SSH keys)" in captured.out
    # No config file: ssh's ProxyCommand will need NBFLEET_TOKEN where it runs.
    assert "needs a token where ssh runs" in captured.err


OLD_BLOCK = "# --- nbfleet start ---\nHost nb-gone\n  User gone\n# --- nbfleet end ---\n"


def test_ssh_config_write_replaces_the_earlier_block_only(server, capsys, tmp_path: Path) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [notebook()]})
    config = tmp_path / ".ssh" / "config"
    config.parent.mkdir(mode=0o700)
    before, after = "Host *\n  AddKeysToAgent yes\n\n", "\nHost gitlab\n  User git\n"
    config.write_text(before + OLD_BLOCK + after)
    config.chmod(0o644)
    assert main(["notebook", "ssh-config", "--write"]) == 0
    text = config.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "nb-gone" not in text and "Host nb-train\n" in text
    assert text.count("# --- nbfleet start ---") == 1
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert f"1 host(s) in {config}: nb-train; e.g. `ssh nb-train`" in capsys.readouterr().err
    # Again: the same file.
    assert main(["notebook", "ssh-config", "--write"]) == 0
    assert config.read_text() == text


def test_ssh_config_write_makes_a_private_file(server, tmp_path: Path) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [notebook()]})
    assert main(["notebook", "ssh-config", "--write"]) == 0
    config = tmp_path / ".ssh" / "config"
    assert config.read_text().startswith("# --- nbfleet start ---\n")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700


def test_ssh_config_write_appends_and_follows_a_symlink(server, tmp_path: Path) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [notebook()]})
    real = tmp_path / "dotfiles" / "ssh_config"
    real.parent.mkdir()
    real.write_text("Host gitlab\n  User git")  # no final newline
    link = tmp_path / "config-link"
    link.symlink_to(real)
    assert main(["notebook", "ssh-config", "--write", str(link)]) == 0
    assert link.is_symlink()
    assert real.read_text().startswith("Host gitlab\n  User git\n\n# --- nbfleet start ---\n")


@pytest.mark.parametrize(
    "text",
    ["# --- nbfleet start ---\nHost x\n", "# --- nbfleet end ---\n# --- nbfleet start ---\n"],
)
def test_ssh_config_write_refuses_broken_markers(server, capsys, tmp_path: Path, text) -> None:
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [notebook()]})
    config = tmp_path / "config"
    config.write_text(text)
    assert main(["notebook", "ssh-config", "--write", str(config)]) == 2
    assert "fix it by hand" in capsys.readouterr().err
    assert config.read_text() == text


def test_ssh_reads_the_written_config(server, tmp_path: Path) -> None:
    """The real ssh parses the entry as meant (``ssh -G`` prints the resolved options)."""
    if shutil.which("ssh") is None:
        pytest.fail("ssh is missing (scripts/test installs openssh-client)", pytrace=False)
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [notebook()]})
    config = tmp_path / "config"
    assert main(["notebook", "ssh-config", "--write", str(config)]) == 0
    resolved = subprocess.run(
        ["ssh", "-G", "-F", str(config), "nb-train"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    options = dict(line.split(" ", 1) for line in resolved)
    assert options["user"] == NB_ID
    assert options["hostkeyalias"] == f"nb-{NB_ID}"
    assert options["serveraliveinterval"] == "30"
    assert options["proxycommand"] == proxy_command(server, NB_ID)


# ---------------------------------------------------------------- through the real ssh


async def test_ssh_logs_in_through_the_written_config(server, tmp_path: Path) -> None:
    """``ssh nb-train CMD`` with the written config: ssh runs ``nbfleet notebook ssh-proxy``,
    which finds the notebook's address at the scheduler and carries the session to an SSH
    server that admits the notebook's id as user with the notebook's key."""
    import asyncssh  # a dependency of nbfleet's (the agent's SSH server)

    if shutil.which("ssh") is None:
        pytest.fail("ssh is missing (scripts/test installs openssh-client)", pytrace=False)
    pub = keygen(tmp_path, "id_ed25519", comment="ada@laptop")
    client_key = asyncssh.import_public_key(pub.read_text())
    logins: list[str] = []

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: Any) -> bool:
            logins.append(username)
            return username == NB_ID and key == client_key

    async def session(process: Any) -> None:
        user = process.get_extra_info("username")
        process.stdout.write(f"{user} ran {process.command}\n")
        process.exit(0)

    ssh_server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=session,
    )
    port = ssh_server.sockets[0].getsockname()[1]
    nb = notebook(ssh=f"ssh://{NB_ID}@127.0.0.1:{port}")
    server.replies[("GET", "/v1/notebooks")] = (200, {"items": [nb]})
    server.replies[("GET", f"/v1/notebooks/{NB_ID}")] = (200, nb)
    config = tmp_path / "config"
    assert main(["notebook", "ssh-config", "--write", str(config)]) == 0
    known_hosts = tmp_path / "known_hosts"
    try:
        process = await asyncio.create_subprocess_exec(
            "ssh",
            "-F",
            str(config),
            "-i",
            str(tmp_path / "id_ed25519"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "nb-train",
            "echo hi",
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        ssh_server.close()
        await ssh_server.wait_closed()
    assert process.returncode == 0, err.decode()
    assert out.decode() == f"{NB_ID} ran echo hi\n"
    assert NB_ID in logins
    # The host key is remembered under the notebook, not the host it runs on today.
    assert known_hosts.read_text().startswith(f"nb-{NB_ID} ssh-ed25519 ")
