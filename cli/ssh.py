"""``nbfleet notebook ssh|ssh-keys|ssh-config|ssh-proxy`` and ``--ssh-public-keys``: SSH into
notebooks through the agent of the host running them.

* ``--ssh-public-keys FILE|KEY`` (``run``, ``fork``, ``ssh-keys``; repeatable): a public key file
  (``~/.ssh/id_ed25519.pub``, or several keys a line, ``#`` comments allowed) or a key line
  itself. Every key is checked here, so a bad one is a usage error naming the flag before
  anything is sent.
* ``ssh ID [-- CMD...]`` replaces itself with the system ``ssh`` aimed at the notebook's current
  address, ``ssh-proxy ID`` bridges stdin/stdout to it (an ssh ``ProxyCommand``), and
  ``ssh-config`` writes one ``Host nb-NAME`` entry per notebook with keys that goes through
  ``ssh-proxy``, so ``ssh nb-NAME``, scp, rsync and VS Code Remote-SSH keep working when the
  notebook moves to another host.
* known_hosts entries are kept under ``nb-<id>`` (``HostKeyAlias``), not under the host's name.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import stat
import sys
import threading
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from cli import output
from cli.args import BadArguments, add_output
from cli.client import DEFAULT_CONFIG, Client
from common import wire
from common.ssh import (
    MAX_KEYS,
    SshAddress,
    SshKeyError,
    looks_like_key,
    parse_public_key,
    parse_ssh_url,
)
from common.states import STARTABLE, NotebookState

FLAG = "--ssh-public-keys"
ACTIONS = ("ssh", "ssh-keys", "ssh-config", "ssh-proxy")

#: Lines that enclose what ``ssh-config --write`` owns in an ssh config file.
BLOCK_START = "# --- nbfleet start ---"
BLOCK_END = "# --- nbfleet end ---"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
#: A key file is a few lines; anything larger is not one.
MAX_KEY_FILE_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 15.0


# ---------------------------------------------------------------- --ssh-public-keys


def key_source(text: str) -> list[str]:
    """argparse type of ``--ssh-public-keys``: the normalized key lines of a key given
    inline or of a key file."""
    if looks_like_key(text):
        try:
            return [parse_public_key(text).line]
        except SshKeyError as exc:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a usable public key: {exc}")
    path = Path(text).expanduser()
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is neither a file nor an OpenSSH public key (give a file like "
            "~/.ssh/id_ed25519.pub, or a line 'ssh-ed25519 AAAA... comment')"
        )
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}")
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise argparse.ArgumentTypeError(f"{text} is too large to be a public key file")
    try:
        content = raw.decode()
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{text} is not a text file of public keys")
    keys = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(parse_public_key(line).line)
        except SshKeyError as exc:
            raise argparse.ArgumentTypeError(
                f"{text} line {number}: not a usable public key: {exc}"
            )
    if not keys:
        raise argparse.ArgumentTypeError(f"{text} holds no public key")
    return keys


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def add_key_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        FLAG,
        dest="ssh_public_keys",
        action="append",
        type=key_source,
        default=[],
        metavar="FILE|KEY",
        help=help_text,
    )


def keys_of(args: argparse.Namespace) -> list[str]:
    """Every key the ``--ssh-public-keys`` options gave, each once, in order."""
    keys: list[str] = []
    seen: set[bytes] = set()
    for group in args.ssh_public_keys:
        for line in group:
            blob = parse_public_key(line).blob
            if blob not in seen:
                seen.add(blob)
                keys.append(line)
    if len(keys) > MAX_KEYS:
        raise BadArguments(f"{FLAG}: {len(keys)} keys; a notebook takes at most {MAX_KEYS}")
    return keys


# ---------------------------------------------------------------- parsers


def add_ssh_parsers(nbs) -> None:
    """The SSH subcommands under ``nbfleet notebook``."""
    keys = nbs.add_parser(
        "ssh-keys",
        help="replace the SSH keys of a notebook, at once (--clear removes them all)",
    )
    keys.add_argument("id")
    add_key_option(keys, "public key file or key line, repeatable")
    keys.add_argument("--clear", action="store_true", help="remove every key")
    add_output(keys)

    ssh = nbs.add_parser(
        "ssh", help="ssh into a RUNNING notebook with keys: nbfleet notebook ssh ID [-- CMD...]"
    )
    ssh.add_argument("id")

    config = nbs.add_parser(
        "ssh-config",
        help="ssh config entries (Host nb-NAME) for your notebooks with keys; --write puts "
        f"them into {DEFAULT_SSH_CONFIG}",
    )
    config.add_argument(
        "--write",
        nargs="?",
        const=DEFAULT_SSH_CONFIG,
        metavar="FILE",
        help=f"write them between nbfleet's markers in FILE (default {DEFAULT_SSH_CONFIG}), "
        "replacing the ones written before",
    )

    proxy = nbs.add_parser(
        "ssh-proxy", help="bridge stdin/stdout to a notebook's SSH server (an ssh ProxyCommand)"
    )
    proxy.add_argument("id")


def cmd_ssh(client: Client, args: argparse.Namespace) -> int:
    if args.action == "ssh-keys":
        return _set_keys(client, args)
    if args.action == "ssh":
        return _ssh(client, args)
    if args.action == "ssh-config":
        return _ssh_config(client, args)
    if args.action == "ssh-proxy":
        return _ssh_proxy(client, args)
    raise AssertionError(args.action)


# ---------------------------------------------------------------- ssh-keys


def _set_keys(client: Client, args: argparse.Namespace) -> int:
    keys = keys_of(args)
    if args.clear and keys:
        raise BadArguments(f"notebook ssh-keys: --clear or {FLAG}, not both")
    if not args.clear and not keys:
        raise BadArguments(f"notebook ssh-keys: give {FLAG} FILE|KEY (repeatable), or --clear")
    body = wire.SshKeysUpdate(keys=keys)
    nb = client.call("PUT", f"/v1/notebooks/{args.id}/ssh-keys", wire.Notebook, body=body)
    if args.output == "json":
        output.print_json(nb)
    else:
        output.notebook_detail(nb)
    return 0


# ---------------------------------------------------------------- ssh and ssh-proxy


def why_no_ssh(nb: wire.Notebook) -> str:
    """Why a notebook has no SSH address, and what to do about it."""
    if not nb.ssh_keys:
        return (
            f"notebook {nb.id} has no SSH keys; give it some: "
            f"nbfleet notebook ssh-keys {nb.id} {FLAG} ~/.ssh/id_ed25519.pub"
        )
    if nb.state != NotebookState.RUNNING:
        text = f"notebook {nb.id} is {nb.state}, not RUNNING"
        if nb.state in STARTABLE:
            text += f"; start it with `nbfleet notebook start {nb.id}`"
        return text
    return f"notebook {nb.id} runs on host {nb.host}, which offers no SSH"


def _address(client: Client, notebook: str) -> tuple[wire.Notebook, SshAddress] | None:
    """The notebook and its SSH address; ``None`` (and why on stderr) when it has none."""
    nb = client.call("GET", f"/v1/notebooks/{notebook}", wire.Notebook)
    if nb.ssh is None:
        sys.stderr.write(f"nbfleet: {why_no_ssh(nb)}\n")
        return None
    try:
        return nb, parse_ssh_url(nb.ssh)
    except ValueError as exc:
        sys.stderr.write(f"nbfleet: notebook {nb.id}: {exc}\n")
        return None


def host_key_alias(notebook_id: str) -> str:
    return f"nb-{notebook_id}"


def ssh_argv(nb: wire.Notebook, address: SshAddress, command: Sequence[str]) -> list[str]:
    """``ssh -p PORT -o HostKeyAlias=nb-ID ID@HOST [CMD...]``."""
    return [
        "ssh",
        "-p",
        str(address.port),
        "-o",
        f"HostKeyAlias={host_key_alias(nb.id)}",
        f"{address.user}@{address.host}",
        *command,
    ]


def _ssh(client: Client, args: argparse.Namespace) -> int:
    found = _address(client, args.id)
    if found is None:
        return 1
    argv = ssh_argv(*found, args.exec_command)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"nbfleet: cannot run ssh ({exc.strerror or exc}); install OpenSSH\n")
    return 1


def _ssh_proxy(client: Client, args: argparse.Namespace) -> int:
    found = _address(client, args.id)
    if found is None:
        return 1
    nb, address = found
    host, port = address.host, address.port
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        sys.stderr.write(
            f"nbfleet: cannot reach the SSH server of notebook {nb.id} at {host}:{port}: "
            f"{exc.strerror or exc}\n"
        )
        return 1
    sock.settimeout(None)
    with sock:
        try:
            bridge(sock, sys.stdin.fileno(), sys.stdout.fileno())
        except OSError as exc:
            sys.stderr.write(f"nbfleet: the connection to {host}:{port} broke: {exc}\n")
            return 1
    return 0


def bridge(sock: socket.socket, in_fd: int, out_fd: int) -> None:
    """Copy ``in_fd`` to ``sock`` (in a thread; its end becomes a half-close) and ``sock`` to
    ``out_fd``, until the server closes. A reader gone from ``out_fd`` ends it quietly."""

    def upstream() -> None:
        try:
            while data := os.read(in_fd, 65536):
                sock.sendall(data)
        except OSError:
            pass
        with suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, name="ssh-proxy-upstream", daemon=True).start()
    while data := sock.recv(65536):
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(out_fd, view) :]
        except BrokenPipeError:
            return


# ---------------------------------------------------------------- ssh-config


def self_command() -> list[str]:
    """How to run this nbfleet again from anywhere: the ``nbfleet`` executable it was started
    as, else this Python with ``-m cli.main``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "nbfleet":
        found = argv0 if os.sep in argv0 else shutil.which(argv0)
        if found and os.access(found, os.X_OK):
            return [os.path.abspath(found)]
    return [sys.executable, "-m", "cli.main"]


def host_aliases(items: Sequence[wire.Notebook]) -> dict[str, str]:
    """notebook id → ``nb-<name>``, or ``nb-<id>`` for a name several notebooks share."""
    counts: dict[str, int] = {}
    for nb in items:
        counts[nb.name] = counts.get(nb.name, 0) + 1
    return {nb.id: f"nb-{nb.name}" if counts[nb.name] == 1 else f"nb-{nb.id}" for nb in items}


def config_block(items: Sequence[wire.Notebook], url: str, command: Sequence[str]) -> str:
    """The marked block of ``Host`` entries for the notebooks with SSH keys among ``items``.

    ``ProxyCommand`` runs ``command --url URL notebook ssh-proxy ID`` through the user's shell,
    so it is shell-quoted, and ``%`` (an ssh token) doubled; the token comes from the CLI's
    config where ssh runs it, never from this file."""
    with_keys = sorted((nb for nb in items if nb.ssh_keys), key=lambda nb: (nb.name, nb.id))
    aliases = host_aliases(with_keys)
    projects = sorted({nb.project for nb in with_keys})
    lines = [
        BLOCK_START,
        "# Written by `nbfleet notebook ssh-config --write`"
        + (f" for project {', '.join(projects)}" if projects else "")
        + "; run it again after adding keys or notebooks.",
    ]
    pinned = []
    if os.environ.get("NBFLEET_CONFIG"):
        pinned = ["env", f"NBFLEET_CONFIG={os.path.abspath(os.environ['NBFLEET_CONFIG'])}"]
    for nb in with_keys:
        proxy = shlex.join([*pinned, *command, "--url", url, "notebook", "ssh-proxy", nb.id])
        lines += [
            f"Host {aliases[nb.id]}",
            f"  User {nb.id}",
            f"  ProxyCommand {proxy.replace('%', '%%')}",
            f"  HostKeyAlias {host_key_alias(nb.id)}",
            "  ServerAliveInterval 30",
        ]
    if not with_keys:
        lines.append("# (no notebook has SSH keys)")
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str, name: str = "the file") -> str:
    """``text`` with nbfleet's block replaced by ``block``, or ``block`` appended."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == BLOCK_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == BLOCK_END]
    if not starts and not ends:
        if text and not text.endswith("\n"):
            text += "\n"
        return text + ("\n" if text.strip() else "") + block
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise BadArguments(
            f"{name} has {len(starts)} `{BLOCK_START}` and {len(ends)} `{BLOCK_END}` lines, "
            "not one pair in that order; fix it by hand, then run this again"
        )
    return "".join(lines[: starts[0]]) + block + "".join(lines[ends[0] + 1 :])


def write_block(path: str, block: str) -> Path:
    """Put ``block`` into the ssh config file ``path`` (through a symlink, as to its target),
    atomically, keeping the file's mode; a new file is 0600 in a 0700 directory."""
    target = Path(os.path.realpath(Path(path).expanduser()))
    try:
        text = target.read_text()
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        text, mode = "", 0o600
    new = replace_block(text, block, str(target))
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.nbfleet-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)  # whatever the umask took away
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def _ssh_config(client: Client, args: argparse.Namespace) -> int:
    items = client.call("GET", "/v1/notebooks", wire.NotebookList).items
    block = config_block(items, client.base, self_command())
    if args.write is None:
        sys.stdout.write(block)
    else:
        try:
            written = write_block(args.write, block)
        except OSError as exc:
            sys.stderr.write(f"nbfleet: cannot write {args.write}: {exc.strerror or exc}\n")
            return 1
        hosts = [line.split()[1] for line in block.splitlines() if line.startswith("Host ")]
        sys.stderr.write(
            f"nbfleet: {len(hosts)} host(s) in {written}"
            + (f": {', '.join(hosts)}; e.g. `ssh {hosts[0]}`" if hosts else "")
            + "\n"
        )
    if not (os.environ.get("NBFLEET_CONFIG") or DEFAULT_CONFIG.expanduser().exists()):
        sys.stderr.write(
            "nbfleet: note: ssh runs `nbfleet notebook ssh-proxy`, which needs a token where ssh "
            f"runs (VS Code too): NBFLEET_TOKEN there, or `token = ...` in {DEFAULT_CONFIG}\n"
        )
    return 0
