"""``nbfleet``: the command line for users and operators, shaped like OVH's ``ovhai notebook``.

Exit status: 0 on success, 1 when the scheduler refused or failed the request (its message is
printed), 2 on a usage error, 3 when ``notebook wait`` saw the notebook settle in another state
or ran out of time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from cli import output, volumes
from cli.client import Client, client_config
from common import wire
from common.config import ConfigError
from common.errors import ApiError
from common.states import SETTLED, NotebookState


def _pairs(kind: str):
    """argparse type for ``k=v`` options, naming the option in its error."""

    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{kind} must look like KEY=VALUE, got {text!r}")
        return key, value

    return parse


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")


def _connection_options() -> argparse.ArgumentParser:
    """``--url``/``--token``, accepted before or after the subcommand (people type both)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="scheduler URL (default: NBFLEET_URL or config file)",
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
    run.add_argument("--gpu", type=int, help="number of GPUs (default 1 unless --cpu is given)")
    run.add_argument(
        "--cpu", type=int, help="number of CPUs (a CPU notebook when --gpu is not given)"
    )
    run.add_argument("--name")
    run.add_argument("--label", action="append", type=_pairs("--label"), default=[])
    run.add_argument("--envvar", action="append", type=_pairs("--envvar"), default=[])
    volumes.add_volume_option(run)
    run.add_argument("--wait", action="store_true", help="wait until the notebook is RUNNING")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")
    _add_output(run)

    ls = nbs.add_parser("list", help="list notebooks")
    ls.add_argument("--state", action="append", default=[], type=str.upper)
    ls.add_argument("--label", action="append", default=[], help="k=v selector, repeatable")
    _add_output(ls)

    for action, text in [
        ("get", "show a notebook, its URL and state history"),
        ("start", "start a stopped notebook again"),
        ("stop", "stop a notebook (its workspace is saved)"),
        ("delete", "delete a notebook and its workspace"),
    ]:
        p = nbs.add_parser(action, help=text)
        p.add_argument("id")
        _add_output(p)

    backup = nbs.add_parser("backup", help="a notebook's workspace snapshots")
    backups = backup.add_subparsers(dest="backup_action", required=True)
    bl = backups.add_parser("list", help="snapshots, newest first (time, size, files)")
    bl.add_argument("id")
    _add_output(bl)

    fork = nbs.add_parser("fork", help="a new notebook whose workspace starts from a backup")
    fork.add_argument("id", help="the notebook to fork")
    fork.add_argument("--backup", required=True, help="snapshot id from `notebook backup list`")
    fork.add_argument("--name")
    fork.add_argument("--gpu", type=int, help="default: the source's resources")
    fork.add_argument("--cpu", type=int)
    fork.add_argument("--label", action="append", type=_pairs("--label"), default=None)
    _add_output(fork)

    logs = nbs.add_parser("logs", help="print a notebook's container output")
    logs.add_argument("id")
    logs.add_argument("--tail", type=int, default=200)

    wait = nbs.add_parser("wait", help="wait until a notebook reaches a state")
    wait.add_argument("id")
    wait.add_argument("--state", default="RUNNING", type=str.upper)
    wait.add_argument("--timeout", type=float, default=600.0)
    _add_output(wait)

    volumes.add_datastore_parser(top, _add_output)

    cat = top.add_parser("catalog", help="list frameworks and editors")
    _add_output(cat)

    admin = top.add_parser("admin", help="operator commands (admin token)")
    adm = admin.add_subparsers(dest="area", required=True)
    project = adm.add_parser("project").add_subparsers(dest="action", required=True)
    pc = project.add_parser("create")
    pc.add_argument("name")
    _add_output(pc)
    _add_output(project.add_parser("list"))
    token = adm.add_parser("token").add_subparsers(dest="action", required=True)
    tc = token.add_parser("create")
    tc.add_argument("--project", required=True)
    tc.add_argument("--role", choices=["read", "operator"], default="operator")
    tc.add_argument("--description", default="")
    _add_output(tc)
    host = adm.add_parser("host").add_subparsers(dest="action", required=True)
    _add_output(host.add_parser("list"))
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
            gpu=args.gpu,
            cpu=args.cpu,
            name=args.name,
            labels=dict(args.label),
            envvars=dict(args.envvar),
            volumes=list(args.volume),
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
    if action in ("start", "stop"):
        nb = client.call("POST", f"/v1/notebooks/{args.id}/{action}", wire.Notebook)
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
        )
        nb = client.call("POST", f"/v1/notebooks/{args.id}/fork", wire.Notebook, body=body)
        _show(nb, args.output)
        return 0
    if action == "logs":
        text = client.request("GET", f"/v1/notebooks/{args.id}/logs", query={"tail": args.tail})
        sys.stdout.write(text.decode(errors="replace"))
        return 0
    if action == "wait":
        try:
            target = NotebookState(args.state)
        except ValueError:
            raise ApiError("invalid_request", f"--state {args.state!r} is not a notebook state")
        return _wait(client, args.id, target, args.timeout, args.output)
    raise AssertionError(action)


def _wait(client: Client, ident: str, target: NotebookState, timeout_s: float, fmt: str) -> int:
    """Poll until ``target``; stop early when the notebook settles somewhere else."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        nb = client.call("GET", f"/v1/notebooks/{ident}", wire.Notebook)
        line = f"{nb.state}: {nb.state_reason}"
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
            sys.stderr.write(f"gave up after {timeout_s:.0f}s: notebook {ident} is {nb.state}\n")
            return 3
        time.sleep(0.5)


def cmd_catalog(client: Client, args: argparse.Namespace) -> int:
    catalog = client.call("GET", "/v1/catalog", wire.Catalog)
    if args.output == "json":
        output.print_json(catalog)
        return 0
    output.table(
        ["FRAMEWORK", "IMAGE", "EDITORS", "DESCRIPTION"],
        [[f.name, f.image, ", ".join(f.editors), f.description] for f in catalog.frameworks],
    )
    return 0


def cmd_admin(client: Client, args: argparse.Namespace) -> int:
    fmt = args.output
    if args.area == "project" and args.action == "create":
        project = client.call(
            "POST", "/v1/admin/projects", wire.Project, body=wire.ProjectCreate(name=args.name)
        )
        output.print_json(project) if fmt == "json" else print(f"project {project.name} created")
        return 0
    if args.area == "project" and args.action == "list":
        items = client.call("GET", "/v1/admin/projects", wire.ProjectList).items
        if fmt == "json":
            output.print_json(items)
        else:
            output.table(
                ["PROJECT", "CREATED"], [[p.name, output.when(p.created_at)] for p in items]
            )
        return 0
    if args.area == "token":
        body = wire.TokenCreate(project=args.project, role=args.role, description=args.description)
        created = client.call("POST", "/v1/admin/tokens", wire.TokenCreated, body=body)
        if fmt == "json":
            output.print_json(created)
        else:
            print(f"token for project {created.project} ({created.role}); shown once, keep it:")
            print(created.token)
        return 0
    if args.area == "host":
        items = client.call("GET", "/v1/admin/hosts", wire.HostList).items
        if fmt == "json":
            output.print_json(items)
            return 0
        rows = []
        for h in items:
            models = ", ".join(sorted({g.model for g in h.gpus}))
            if not models:
                models = f"- ({h.gpu_note})" if h.gpu_note else "-"
            free = sum(1 for g in h.gpus if g.notebook is None)
            rows.append(
                [
                    h.id,
                    h.state,
                    f"{free}/{len(h.gpus)}",
                    models,
                    f"{h.cpus_free}/{h.cpus}",
                    output.ago(h.last_heartbeat),
                ]
            )
        output.table(["HOST", "STATE", "GPUS FREE", "MODELS", "CPUS FREE", "HEARTBEAT"], rows)
        return 0
    raise AssertionError(args.area)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = Client(client_config(getattr(args, "url", None), getattr(args, "token", None)))
        if args.group in ("notebook", "nb"):
            return cmd_notebook(client, args)
        if args.group == "datastore":
            return volumes.cmd_datastore(client, args)
        if args.group == "catalog":
            return cmd_catalog(client, args)
        return cmd_admin(client, args)
    except ConfigError as exc:
        sys.stderr.write(f"nbfleet: {exc}\n")
        return 2
    except ApiError as exc:
        sys.stderr.write(f"nbfleet: {exc.message}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
