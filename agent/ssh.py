"""SSH into the notebooks this host runs (asyncssh), for ``ssh``, ``scp``, ``rsync``, VS Code
Remote-SSH and JetBrains Gateway.

* The user name is the notebook id; the only authentication is public key, against that
  notebook's own keys (``Assignment.ssh_public_keys``), and only while it runs here. A key of
  one notebook opens no other; passwords, keyboard-interactive, agent and X11 forwarding are
  off.
* Everything a session does runs inside the notebook's container, as the notebook's user,
  through ``docker exec`` (working directory ``/workspace``): a shell with or without a PTY
  (window size changes follow), a command (``ssh nb cmd``, ``rsync --server``), the SFTP
  subsystem (the image's own ``sftp-server``, which modern ``scp`` uses too). The agent never
  serves host paths: the threat model of ``agent/userfs.py`` holds.
* Local port forwarding (``ssh -L``) reaches ports on the container's own loopback only: a
  small connector runs inside the container (``python3``, else busybox ``nc``); any other
  destination is refused. Remote forwarding is refused.
* Each session and forwarded connection counts as activity of the notebook (the idle signal).
* The host key (ed25519) is made once in ``state_dir`` and kept, so clients' known_hosts entries
  stay valid across agent restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import aiodocker
import asyncssh
from aiodocker.exceptions import DockerError
from asyncssh.constants import EXTENDED_DATA_STDERR
from asyncssh.stream import SSHReader, SSHWriter

from agent.runtime import container_name

log = logging.getLogger(__name__)

#: Finds the image's sftp-server where Debian, Fedora and Alpine put it.
SFTP_SERVER = (
    "for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server "
    "/usr/lib/ssh/sftp-server /usr/libexec/sftp-server; do "
    '[ -x "$p" ] && exec "$p"; done; '
    'echo "this notebook image has no sftp-server (openssh-sftp-server)" >&2; exit 127'
)
#: A login shell: the image's bash if it has one.
LOGIN_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"
#: Bridges stdin/stdout to 127.0.0.1:$1 inside the container.
CONNECTOR_PY = (
    "import os, socket, sys, threading\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "def up():\n"
    "    while True:\n"
    "        d = os.read(0, 65536)\n"
    "        if not d:\n"
    "            break\n"
    "        s.sendall(d)\n"
    "    s.shutdown(socket.SHUT_WR)\n"
    "threading.Thread(target=up, daemon=True).start()\n"
    "while True:\n"
    "    d = s.recv(65536)\n"
    "    if not d:\n"
    "        break\n"
    "    os.write(1, d)\n"
)
CONNECTOR = (
    'if command -v python3 >/dev/null 2>&1; then exec python3 -c "$NBFLEET_CONNECTOR" "$1"; '
    'else exec nc 127.0.0.1 "$1"; fi'
)
LOCALHOST = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
#: Client environment passed into sessions (as OpenSSH's AcceptEnv default does).
PASSED_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "COLORTERM")


@dataclass(frozen=True)
class SshTarget:
    """A notebook running on this host that may be entered: its keys and its user."""

    notebook: str
    keys: tuple[str, ...]
    user: str


Lookup = Callable[[str], SshTarget | None]


def load_host_key(path: str) -> asyncssh.SSHKey:
    """The host key at ``path``, made (ed25519, mode 0600) when there is none."""
    try:
        return asyncssh.read_private_key(path)
    except FileNotFoundError:
        pass
    key = asyncssh.generate_private_key("ssh-ed25519")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key())
    log.info("ssh host key created in %s (%s)", path, key.get_fingerprint())
    return key


class NotebookSshServer:
    """``start()`` listens on ``host:port`` (port 0: any free one, see :attr:`port`)."""

    def __init__(
        self,
        host: str,
        port: int,
        host_key_file: str,
        lookup: Lookup,
        *,
        docker_url: str = "",
        on_activity: Callable[[str], None] | None = None,
    ) -> None:
        self.host, self.requested_port = host, port
        self.host_key_file = host_key_file
        self.lookup = lookup
        self.on_activity = on_activity or (lambda notebook: None)
        self._docker_url = docker_url or None
        self._docker: aiodocker.Docker | None = None
        self._server: asyncssh.SSHAcceptor | None = None
        self._host_key: asyncssh.SSHKey | None = None
        self.port = 0

    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._docker_url)
        return self._docker

    def use_host_key(self, private_key: str) -> None:
        """Present ``private_key`` (OpenSSH text; the fleet's, from the scheduler) from now on,
        to every connection accepted after this."""
        key = asyncssh.import_private_key(private_key.strip() + "\n")
        if self._host_key is not None and key.public_data == self._host_key.public_data:
            return
        self._host_key = key
        if self._server is not None:
            self._server.update(server_host_keys=[key])
        log.info("ssh host key is now %s", key.get_fingerprint())

    async def start(self) -> None:
        key = self._host_key or await asyncio.to_thread(load_host_key, self.host_key_file)
        self._host_key = key
        self._server = await asyncssh.create_server(
            lambda: _Gate(self),
            self.host,
            self.requested_port,
            server_host_keys=[key],
            encoding=None,
            line_editor=False,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=30,
            keepalive_count_max=6,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ssh server listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    # ------------------------------------------------------------ sessions

    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        notebook = process.get_extra_info("username")
        target = self.lookup(notebook)
        if target is None:
            process.stderr.write(f"notebook {notebook} is not running on this host\n".encode())
            process.exit(255)
            return
        tty = process.get_terminal_type() is not None
        if process.subsystem == "sftp":
            command = ["/bin/sh", "-c", SFTP_SERVER]
        elif process.subsystem:
            process.stderr.write(f"subsystem {process.subsystem} is not offered\n".encode())
            process.exit(1)
            return
        elif process.command is not None:
            command = ["/bin/sh", "-c", process.command]
        else:
            command = ["/bin/sh", "-c", LOGIN_SHELL]
        env = [f"{name}={value}" for name, value in process.env.items() if name in PASSED_ENV]
        if tty:
            env.append(f"TERM={process.get_terminal_type()}")
        self.on_activity(notebook)
        try:
            code = await self._run(target, process, command, env, tty)
        except (DockerError, OSError) as exc:
            log.warning("notebook=%s ssh session failed: %s", notebook, exc)
            process.stderr.write(f"cannot enter notebook {notebook}: {exc}\n".encode())
            code = 255
        process.exit(code)

    async def _run(
        self,
        target: SshTarget,
        process: asyncssh.SSHServerProcess,
        command: list[str],
        env: list[str],
        tty: bool,
    ) -> int:
        container = self.docker().containers.container(container_name(target.notebook))
        execution = await container.exec(
            command,
            stdin=True,
            stdout=True,
            stderr=True,
            tty=tty,
            user=target.user,
            workdir="/workspace",
            environment=env,
        )
        stream = execution.start(detach=False)
        await stream.write_in(b"")  # starts the exec, so that it can be resized
        if tty:
            width, height = process.get_terminal_size()[:2]
            await _resize(execution, width, height)

        async def into_container() -> None:
            while True:
                try:
                    data = await process.stdin.read(65536)
                except asyncssh.TerminalSizeChanged as change:
                    await _resize(execution, change.width, change.height)
                    continue
                except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                    continue
                if not data:
                    # A terminal has no end of input (Ctrl-D is a byte); closing a TTY exec's
                    # stdin hangs it up before it has written anything.
                    if not tty:
                        _close_stdin(stream)
                    return
                self.on_activity(target.notebook)
                await stream.write_in(data)

        async def out_of_container() -> None:
            while (message := await stream.read_out()) is not None:
                sink = process.stderr if message.stream == 2 else process.stdout
                sink.write(message.data)
                await sink.drain()

        feeding = asyncio.ensure_future(into_container())
        try:
            await out_of_container()
        finally:
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
            await stream.close()
        return await _exit_code(execution)

    # ------------------------------------------------------------ port forwarding

    def forward(self, notebook: str, port: int) -> _Forward:
        target = self.lookup(notebook)
        if target is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"notebook {notebook} is not running on this host"
            )
        self.on_activity(notebook)
        return _Forward(self, target, port)


class _Gate(asyncssh.SSHServer):
    """Authentication and channel policy of one connection."""

    def __init__(self, server: NotebookSshServer) -> None:
        self.server = server
        self.notebook = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.peer = conn.get_extra_info("peername")

    def begin_auth(self, username: str) -> bool:
        self.notebook = username
        return True

    def session_requested(self) -> _Session:
        return _Session(self.server._session, None, 0, False)

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        target = self.server.lookup(username)
        if target is None:
            log.info("ssh: %s asked for notebook %r, not running on this host", self.peer, username)
            return False
        offered = key.public_data
        for line in target.keys:
            try:
                if asyncssh.import_public_key(line).public_data == offered:
                    return True
            except (asyncssh.KeyImportError, ValueError):
                continue
        log.info("ssh: %s offered a key notebook %s does not hold", self.peer, username)
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> _Forward:
        if dest_host.lower() not in LOCALHOST:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "only ports inside the notebook (localhost:PORT) can be forwarded",
            )
        return self.server.forward(self.notebook, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote forwarding: nothing listens on the host for a notebook

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


class _Session(asyncssh.SSHServerProcess):
    """A session whose every request, the ``sftp`` subsystem included, goes to
    :meth:`NotebookSshServer._session`. asyncssh accepts ``sftp`` only with an SFTP server of
    its own, which would serve the agent's files; here the image's sftp-server does, inside the
    container. (The three lines below mirror asyncssh's own session start without that.)"""

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        stdin = SSHReader(self, self._chan)
        stdout = SSHWriter(self, self._chan)
        stderr = SSHWriter(self, self._chan, EXTENDED_DATA_STDERR)
        self._conn.create_task(self._session_factory(stdin, stdout, stderr), stdin.logger)


class _Forward(asyncssh.SSHTCPSession):
    """One ``ssh -L`` connection, bridged to 127.0.0.1:PORT inside the container."""

    def __init__(self, server: NotebookSshServer, target: SshTarget, port: int) -> None:
        self.server, self.target, self.port = server, target, port
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        self.task = asyncio.ensure_future(self._bridge())

    def data_received(self, data: bytes, datatype: object) -> None:
        self.queue.put_nowait(data)

    def eof_received(self) -> bool:
        self.queue.put_nowait(None)
        return True  # keep the channel open for what comes back

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _bridge(self) -> None:
        container = self.server.docker().containers.container(container_name(self.target.notebook))
        try:
            execution = await container.exec(
                ["/bin/sh", "-c", CONNECTOR, "sh", str(self.port)],
                stdin=True,
                stdout=True,
                stderr=True,
                user=self.target.user,
                environment=[f"NBFLEET_CONNECTOR={CONNECTOR_PY}"],
            )
            stream = execution.start(detach=False)
            await stream.write_in(b"")
        except (DockerError, OSError) as exc:
            log.info(
                "notebook=%s ssh forward to port %d failed: %s",
                self.target.notebook,
                self.port,
                exc,
            )
            self.chan.close()
            return

        async def upward() -> None:
            while (data := await self.queue.get()) is not None:
                self.server.on_activity(self.target.notebook)
                await stream.write_in(data)
            _close_stdin(stream)

        feeding = asyncio.ensure_future(upward())
        try:
            while (message := await stream.read_out()) is not None:
                if message.stream == 1:
                    self.chan.write(message.data)
                else:
                    log.debug("notebook=%s forward: %s", self.target.notebook, message.data)
        finally:
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
            await stream.close()
            self.chan.close()


# ---------------------------------------------------------------- docker exec helpers


async def _resize(execution, width: int, height: int) -> None:
    if width > 0 and height > 0:
        with contextlib.suppress(DockerError):
            await execution.resize(w=width, h=height)


def _close_stdin(stream) -> None:
    """Half-close the exec's stdin (end of input) and keep reading its output: aiodocker's
    ``close()`` would end both."""
    response = getattr(stream, "_resp", None)
    transport = response.connection.transport if response and response.connection else None
    if transport is not None and transport.can_write_eof():
        transport.write_eof()


async def _exit_code(execution) -> int:
    """The exec's exit status (Docker may take a moment to record it after the stream ends)."""
    for _ in range(50):
        details = await execution.inspect()
        if not details.get("Running") and details.get("ExitCode") is not None:
            return int(details["ExitCode"])
        await asyncio.sleep(0.05)
    return 255
