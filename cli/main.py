"""``nbfleet``: the command line for users and operators, shaped like OVH's ``ovhai notebook``.

Exit status: 0 on success, 1 when the scheduler refused or failed the request (its message is
printed), 2 on a usage error, 3 when ``notebook wait`` saw the notebook settle in another state
or ran out of time. ``notebook exec`` exits with the command's own exit status once it ran;
``notebook ssh`` becomes the system ``ssh``, whose exit status it is.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import sys
import time
from collections.abc import Sequence

from cli import admin, datasync, output, ssh, tokens, update, usage, volumes
from cli.args import BadArguments, add_output, idle_timeout, label_pairs, pairs
from cli.client import Client, client_config
from common import wire
from common.config import ConfigError
from common.errors import ApiError
from common.states import SETTLED, NotebookState

#: The state each of ``notebook start`` / ``stop`` ends in, which ``--wait`` waits for.
_SETTLES_IN = {"start": "RUNNING", "stop": "STOPPED"}


def _connection_options() -> argparse.ArgumentParser:
    """``--url``/``--token``, accepted before or after the subcommand (people type both)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="scheduler URL, or several comma-separated: replicas tried in turn when one "
        "does not answer (default: NBFLEET_URL or config file)",
    )
    options.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="API token (default: NBFLEET_TOKEN or config file)",
    )
    return options


class _Subcommands(argparse._SubParsersAction):
    """Every subcommand also takes the connection options."""

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("parents", []).append(_connection_options())
        return super().add_parser(name, **kwargs)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Nested subcommand parsers are built from type(parent), so this reaches all levels.
        self.register("action", "parsers", _Subcommands)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nbfleet", description="Managed GPU notebooks.", parents=[_connection_options()]
    )
    top = parser.add_subparsers(dest="group", required=True)

    nb = top.add_parser("notebook", aliases=["nb"], help="run and manage notebooks")
    nbs = nb.add_subparsers(dest="action", required=True)
    run = nbs.add_parser("run", help="start a new notebook")
    run.add_argument("framework", help="framework from `nbfleet catalog` (e.g. conda)")
    run.add_argument("editor", help="editor from `nbfleet catalog` (e.g. jupyterlab)")
    run.add_argument(
        "--framework-version",
        metavar="VERSION",
        help="one of the framework's versions in `nbfleet catalog` (default: the newest); "
        "the notebook keeps it until `nbfleet notebook update --framework-version`",
    )
    run.add_argument("--gpu", type=int, help="number of GPUs (default 1 unless --cpu is given)")
    run.add_argument(
        "--cpu", type=int, help="number of CPUs (a CPU notebook when --gpu is not given)"
    )
    run.add_argument(
        "--flavor", help="catalog flavor (GPU model; CPU, memory and disk per GPU or CPU)"
    )
    run.add_argument("--name")
    run.add_argument(
        "--restart-on-timeout",
        action="store_true",
        help="after the runtime limit or a lost host, start again (same id and workspace)",
    )
    run.add_argument(
        "--unsecure-http",
        action="store_true",
        help="public notebook: anyone with its URL opens the editor, without a token",
    )
    run.add_argument(
        "--idle-timeout",
        type=idle_timeout("--idle-timeout", off=False),
        metavar="DURATION",
        help="stop the notebook (workspace saved) after this long idle, e.g. 30m; at most "
        "the project's idle timeout, which applies otherwise",
    )
    run.add_argument("--label", action="append", type=label_pairs("--label"), default=[])
    run.add_argument("--envvar", action="append", type=pairs("--envvar"), default=[])
    volumes.add_volume_option(run)
    ssh.add_key_option(
        run,
        "public key allowed to ssh in (a file like ~/.ssh/id_ed25519.pub, or the key line); "
        "repeatable",
    )
    run.add_argument("--wait", action="store_true", help="wait until the notebook is RUNNING")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    add_output(run)

    ls = nbs.add_parser("list", help="list notebooks")
    ls.add_argument("--state", action="append", default=[], type=str.upper)
    ls.add_argument("--label", action="append", default=[], help="k=v selector, repeatable")
    add_output(ls)

    for action, text in [
        ("get", "show a notebook, its URL and state history"),
        ("start", "start a stopped notebook again"),
        ("stop", "stop a notebook (its workspace is saved)"),
        ("delete", "delete a notebook and its workspace"),
    ]:
        p = nbs.add_parser(action, help=text)
        p.add_argument("id")
        if action in _SETTLES_IN:
            p.add_argument(
                "--wait",
                action="store_true",
                help=f"wait until the notebook is {_SETTLES_IN[action]}",
            )
            p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
        add_output(p)

    backup = nbs.add_parser("backup", help="a notebook's workspace snapshots")
    backups = backup.add_subparsers(dest="backup_action", required=True)
    bl = backups.add_parser("list", help="snapshots, newest first (time, size, files)")
    bl.add_argument("id")
    add_output(bl)

    fork = nbs.add_parser("fork", help="a new notebook whose workspace starts from a backup")
    fork.add_argument("id", help="the notebook to fork")
    fork.add_argument("--backup", required=True, help="snapshot id from `notebook backup list`")
    fork.add_argument("--name")
    fork.add_argument("--gpu", type=int, help="default: the source's resources")
    fork.add_argument("--cpu", type=int)
    fork.add_argument("--label", action="append", type=label_pairs("--label"), default=None)
    ssh.add_key_option(fork, "public key allowed to ssh in (the source's are not copied)")
    add_output(fork)

    logs = nbs.add_parser("logs", help="print a notebook's container output")
    logs.add_argument("id")
    logs.add_argument("--tail", type=int, default=200)
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new output until the notebook stops (Ctrl-C to leave)",
    )

    run_in = nbs.add_parser(
        "exec",
        help="run a command in a RUNNING notebook (operator token): nbfleet notebook exec ID "
        "-- CMD [ARG...]",
    )
    run_in.add_argument("id")
    run_in.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the command may run (default 60)"
    )
    add_output(run_in)

    wait = nbs.add_parser(
        "wait", help="wait until a notebook reaches a state: wait ID [STATE] (default RUNNING)"
    )
    wait.add_argument("id")
    wait.add_argument("state", nargs="?", type=str.upper, help="e.g. RUNNING, STOPPED")
    wait.add_argument("--state", dest="state_option", type=str.upper, help="same as STATE")
    wait.add_argument("--timeout", type=float, default=600.0)
    add_output(wait)

    ssh.add_ssh_parsers(nbs)
    datasync.add_datasync_parser(nbs)
    update.add_update_parser(nbs, add_output)

    volumes.add_datastore_parser(top, add_output)
    tokens.add_token_parser(top)

    add_output(top.add_parser("quota", help="your project's quota and what it uses"))
    use = top.add_parser("usage", help="your project's usage over a period")
    usage.add_usage_options(
        use, usage.USER_GROUPS, "notebook", project_help="default: the token's project"
    )

    cat = top.add_parser("catalog", help="list frameworks and editors")
    add_output(cat)

    admin.add_admin_parser(top)
    return parser


# ------------------------------------------------------------------------------ commands


def _show(nb: wire.Notebook, fmt: str) -> None:
    if fmt == "json":
        output.print_json(nb)
    else:
        output.notebook_detail(nb)


def cmd_notebook(client: Client, args: argparse.Namespace) -> int:
    action = args.action
    if action == "run":
        body = wire.NotebookCreate(
            framework=args.framework,
            editor=args.editor,
            framework_version=args.framework_version,
            gpu=args.gpu,
            cpu=args.cpu,
            name=args.name,
            labels=dict(args.label),
            envvars=dict(args.envvar),
            volumes=list(args.volume),
            flavor=args.flavor,
            restart_on_timeout=args.restart_on_timeout,
            unsecure_http=args.unsecure_http,
            ssh_public_keys=ssh.keys_of(args),
            idle_timeout_s=args.idle_timeout,
        )
        nb = client.call("POST", "/v1/notebooks", wire.Notebook, body=body)
        if args.wait:
            return _wait(client, nb.id, NotebookState.RUNNING, args.timeout, args.output)
        _show(nb, args.output)
        return 0
    if action == "list":
        query = [("state", s) for s in args.state] + [("label", sel) for sel in args.label]
        items = client.call("GET", "/v1/notebooks", wire.NotebookList, query=query).items
        if args.output == "json":
            output.print_json(items)
        else:
            output.table(output.NOTEBOOK_HEADERS, output.notebook_rows(items))
        return 0
    if action == "get":
        _show(client.call("GET", f"/v1/notebooks/{args.id}", wire.Notebook), args.output)
        return 0
    if action in _SETTLES_IN:
        nb = client.call("POST", f"/v1/notebooks/{args.id}/{action}", wire.Notebook)
        if args.wait:
            target = NotebookState(_SETTLES_IN[action])
            return _wait(client, nb.id, target, args.timeout, args.output)
        _show(nb, args.output)
        return 0
    if action == "delete":
        _show(client.call("DELETE", f"/v1/notebooks/{args.id}", wire.Notebook), args.output)
        return 0
    if action == "backup":
        items = client.call("GET", f"/v1/notebooks/{args.id}/backups", wire.SnapshotList).items
        if args.output == "json":
            output.print_json(items)
        else:
            output.table(output.SNAPSHOT_HEADERS, output.snapshot_rows(items))
        return 0
    if action == "fork":
        body = wire.NotebookFork(
            backup=args.backup,
            name=args.name,
            gpu=args.gpu,
            cpu=args.cpu,
            labels=None if args.label is None else dict(args.label),
            ssh_public_keys=ssh.keys_of(args),
        )
        nb = client.call("POST", f"/v1/notebooks/{args.id}/fork", wire.Notebook, body=body)
        _show(nb, args.output)
        return 0
    if action == "logs":
        path = f"/v1/notebooks/{args.id}/logs"
        if args.follow:
            _print_stream(client.stream(path, query={"tail": args.tail, "follow": 1}))
            return 0
        text = client.request("GET", path, query={"tail": args.tail})
        sys.stdout.write(text.decode(errors="replace"))
        return 0
    if action == "exec":
        return _exec(client, args)
    if action == "wait":
        return _wait(client, args.id, _wait_target(args), args.timeout, args.output)
    if action in ssh.ACTIONS:
        return ssh.cmd_ssh(client, args)
    if action in datasync.ACTIONS:
        return datasync.cmd_datasync(client, args)
    if action in update.ACTIONS:
        return update.cmd_update(client, args)
    raise AssertionError(action)


def _wait_target(args: argparse.Namespace) -> NotebookState:
    """``wait ID STATE`` and ``wait ID --state STATE`` are the same; both at once must agree."""
    given = [s for s in (args.state, args.state_option) if s is not None]
    if len(set(given)) > 1:
        raise BadArguments(
            f"notebook wait: STATE {args.state} and --state {args.state_option} disagree"
        )
    name = given[0] if given else NotebookState.RUNNING.value
    try:
        return NotebookState(name)
    except ValueError:
        states = ", ".join(s.value for s in NotebookState)
        raise BadArguments(f"notebook wait: {name!r} is not a notebook state ({states})")


def _print_stream(chunks) -> None:
    """Print text as it arrives; a character split between two chunks is printed whole."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True))


def _exec(client: Client, args: argparse.Namespace) -> int:
    if not args.exec_command:
        raise BadArguments("notebook exec needs a command after `--`: exec ID -- CMD [ARG...]")
    body = wire.ExecRequest(command=list(args.exec_command), timeout_s=args.timeout)
    # The scheduler waits for the command, so this call may take as long as it does.
    client.timeout_s = max(client.timeout_s, args.timeout + 30)
    result = client.call("POST", f"/v1/notebooks/{args.id}/exec", wire.ExecResult, body=body)
    if args.output == "json":
        output.print_json(result)
    else:
        sys.stdout.write(result.output)
        sys.stdout.flush()
    if result.truncated:
        sys.stderr.write("nbfleet: output truncated (the agent keeps at most 1 MiB)\n")
    # An exit status is a byte; a negative one (killed by a signal) still reads as failure.
    return result.exit_code if 0 <= result.exit_code <= 255 else 1


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """``notebook exec|ssh ID [options] -- CMD...``: the command is everything after the first
    ``--``, verbatim (its own options and ``--`` included), so argparse never sees it."""
    if "--" in argv:
        cut = argv.index("--")
        if "exec" in argv[:cut] or "ssh" in argv[:cut]:
            return argv[:cut], argv[cut + 1 :]
    return argv, []


#: How often ``--wait`` asks; a GET of one notebook is cheap, and every poll interval is up to
#: that much added to what ``run --wait`` shows of a start.
WAIT_POLL_S = 0.25


def _wait(client: Client, ident: str, target: NotebookState, timeout_s: float, fmt: str) -> int:
    """Poll until ``target``; stop early when the notebook settles somewhere else. QUEUED is
    not settled: a queued notebook is still on its way, so the wait goes on, showing its
    position as it moves up."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        nb = client.call("GET", f"/v1/notebooks/{ident}", wire.Notebook)
        line = output.queue_text(nb)
        if nb.progress is not None:
            line += f" ({output.progress(nb.progress)})"
        if fmt == "table" and line != last:
            sys.stderr.write(f"{output.when(time.time())}  {line}\n")
            last = line
        if nb.state == target:
            _show(nb, fmt)
            return 0
        if nb.state in SETTLED and nb.state != target:
            _show(nb, fmt)
            sys.stderr.write(f"notebook {ident} is {nb.state}, not {target}: {nb.state_reason}\n")
            return 3
        if time.monotonic() > deadline:
            sys.stderr.write(f"gave up after {timeout_s:.0f}s: notebook {ident} is {line}\n")
            return 3
        time.sleep(WAIT_POLL_S)


def cmd_catalog(client: Client, args: argparse.Namespace) -> int:
    catalog = client.call("GET", "/v1/catalog", wire.Catalog)
    if args.output == "json":
        output.print_json(catalog)
        return 0
    output.table(
        ["FRAMEWORK", "VERSION", "EDITORS", "IMAGE", "HOSTS", "CONTENTS"],
        output.catalog_rows(catalog.frameworks),
    )
    if catalog.flavors:
        print()
        output.table(
            ["FLAVOR", "PER UNIT", "CPU", "MEMORY", "DISK", "DESCRIPTION"],
            [
                [
                    f.name,
                    f"1 × {f.gpu_model}" if f.gpu_model else "1 CPU",
                    str(f.cpu),
                    f"{f.memory_mb / 1024:g} GiB",
                    f"{f.disk_gb} GB",
                    f.description,
                ]
                for f in catalog.flavors
            ],
        )
    return 0


def cmd_quota(client: Client, args: argparse.Namespace) -> int:
    project = client.call("GET", "/v1/quota", wire.Project)
    output.print_json(project) if args.output == "json" else output.quota_detail(project)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options, command = split_command(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(options)
    args.exec_command = command
    try:
        client = Client(client_config(getattr(args, "url", None), getattr(args, "token", None)))
        if args.group in ("notebook", "nb"):
            return cmd_notebook(client, args)
        if args.group == "datastore":
            return volumes.cmd_datastore(client, args)
        if args.group == "token":
            return tokens.cmd_token(client, args)
        if args.group == "catalog":
            return cmd_catalog(client, args)
        if args.group == "quota":
            return cmd_quota(client, args)
        if args.group == "usage":
            return usage.cmd_usage(client, args)
        return admin.cmd_admin(client, args)
    except (ConfigError, BadArguments) as exc:
        sys.stderr.write(f"nbfleet: {exc}\n")
        return 2
    except ApiError as exc:
        sys.stderr.write(f"nbfleet: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`nbfleet notebook get ID | head`): like any Unix tool, stop
        # quietly; stdout is pointed at /dev/null so the interpreter's last flush cannot fail.
        with contextlib.suppress(OSError, ValueError):  # no file descriptor behind stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
