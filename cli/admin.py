"""``nbfleet admin ...``: operator commands (admin token): projects and their quotas, tokens,
hosts (list, cordon, drain, uncordon) and usage across projects."""

from __future__ import annotations

import argparse

import msgspec

from cli import output, tokens, usage
from cli.args import BadArguments, add_output, idle_timeout
from cli.client import Client
from common import wire

#: QuotaUpdate field → its flag on ``admin project quota``.
QUOTA_FLAGS = {
    "gpus": "--gpus",
    "cpus": "--cpus",
    "notebooks": "--notebooks",
    "gpus_per_notebook": "--gpus-per-notebook",
    "cpus_per_notebook": "--cpus-per-notebook",
}

HOST_ACTIONS = {
    "cordon": "place no new notebooks on HOST; those on it keep running",
    "drain": "cordon HOST and have its notebooks leave it",
    "uncordon": "place new notebooks on HOST again",
}


def add_admin_parser(top) -> None:
    """``nbfleet admin ...`` under the top-level subparsers ``top``."""
    admin = top.add_parser("admin", help="operator commands (admin token)")
    adm = admin.add_subparsers(dest="area", required=True)

    project = adm.add_parser("project", help="projects and their quotas")
    projects = project.add_subparsers(dest="action", required=True)
    pc = projects.add_parser("create", help="create a project (with the default quota)")
    pc.add_argument("name")
    add_output(pc)
    add_output(projects.add_parser("list", help="projects with their quota and use"))
    pq = projects.add_parser(
        "quota", help="show a project's quota and use; with flags, change the quota"
    )
    pq.add_argument("name")
    for field, flag in QUOTA_FLAGS.items():
        pq.add_argument(flag, dest=field, type=int, metavar="N")
    pq.add_argument(
        "--idle-timeout",
        dest="idle_timeout_s",
        type=idle_timeout("--idle-timeout", off=True),
        metavar="DURATION",
        help="stop the project's notebooks after this long idle (e.g. 60m); off: never",
    )
    add_output(pq)

    token = adm.add_parser("token", help="project tokens")
    tc = token.add_subparsers(dest="action", required=True).add_parser(
        "create", help="a token for a project (shown once)"
    )
    tc.add_argument("--project", required=True)
    tc.add_argument("--role", choices=["read", "operator"], default="operator")
    tc.add_argument("--description", default="")
    tokens.add_label_selector(tc)
    add_output(tc)

    host = adm.add_parser("host", help="GPU hosts")
    hosts = host.add_subparsers(dest="action", required=True)
    add_output(
        hosts.add_parser("list", help="hosts, their state, free GPUs, CPUs and workspace disk")
    )
    for action, text in HOST_ACTIONS.items():
        p = hosts.add_parser(action, help=text)
        p.add_argument("host")
        add_output(p)

    use = adm.add_parser("usage", help="usage of all projects (or one) over a period")
    usage.add_usage_options(
        use, usage.ADMIN_GROUPS, "project", project_help="only this project (default: all)"
    )


def cmd_admin(client: Client, args: argparse.Namespace) -> int:
    if args.area == "project":
        return _project(client, args)
    if args.area == "token":
        return _token(client, args)
    if args.area == "host":
        return _host(client, args)
    if args.area == "usage":
        return usage.cmd_admin_usage(client, args)
    raise AssertionError(args.area)


def _project(client: Client, args: argparse.Namespace) -> int:
    fmt = args.output
    if args.action == "create":
        body = wire.ProjectCreate(name=args.name)
        project = client.call("POST", "/v1/admin/projects", wire.Project, body=body)
        output.print_json(project) if fmt == "json" else print(f"project {project.name} created")
        return 0
    if args.action == "list":
        items = client.call("GET", "/v1/admin/projects", wire.ProjectList).items
        if fmt == "json":
            output.print_json(items)
        else:
            output.table(output.PROJECT_HEADERS, output.project_rows(items), numeric={4})
        return 0
    if args.action == "quota":
        changes = quota_changes(args)
        path = f"/v1/admin/projects/{args.name}"
        if changes:
            # Only the given fields: the others stay as they are on the scheduler.
            project = client.call("PATCH", f"{path}/quota", wire.Project, body=changes)
        else:
            project = client.call("GET", path, wire.Project)
        output.print_json(project) if fmt == "json" else output.quota_detail(project)
        return 0
    raise AssertionError(args.action)


def quota_changes(args: argparse.Namespace) -> dict[str, float]:
    """The quota flags given, checked against the API's limits so a bad one is named by its
    flag before anything is sent (``--idle-timeout`` is checked as it is parsed)."""
    changes: dict[str, float] = {
        f: getattr(args, f) for f in QUOTA_FLAGS if getattr(args, f) is not None
    }
    if args.idle_timeout_s is not None:
        changes["idle_timeout_s"] = args.idle_timeout_s
    try:
        msgspec.convert(changes, wire.QuotaUpdate)
    except msgspec.ValidationError as exc:
        message = str(exc)
        for field, flag in QUOTA_FLAGS.items():
            if f"`$.{field}`" in message:
                reason = message.split(" - at ")[0].replace("Expected `int` ", "must be ")
                raise BadArguments(f"{flag} {changes[field]}: {reason}")
        raise BadArguments(message)
    return changes


def _token(client: Client, args: argparse.Namespace) -> int:
    body = wire.TokenCreate(
        project=args.project,
        role=args.role,
        description=args.description,
        label_selector=dict(args.label_selector),
    )
    created = client.call("POST", "/v1/admin/tokens", wire.TokenCreated, body=body)
    tokens.print_created(created, args.output)
    return 0


def _host(client: Client, args: argparse.Namespace) -> int:
    fmt = args.output
    if args.action == "list":
        items = client.call("GET", "/v1/admin/hosts", wire.HostList).items
        if fmt == "json":
            output.print_json(items)
        else:
            output.table(output.HOST_HEADERS, output.host_rows(items), numeric={6})
            notes = output.host_notes(items)
            if notes:
                print("\n" + "\n".join(notes))
        return 0
    host = client.call("POST", f"/v1/admin/hosts/{args.host}/{args.action}", wire.Host)
    if fmt == "json":
        output.print_json(host)
        return 0
    line = f"host {host.id}: {host.state}"
    if host.state == "ready" and host.placement_blocked:
        line += f", but no new notebooks: {host.placement_blocked}"
    elif host.state == "draining":
        line += f" ({host.notebooks} notebook(s) still leaving)"
    elif host.state == "cordoned":
        line += " (no new notebooks"
        line += f"; the {host.notebooks} on it keep running)" if host.notebooks else ")"
    print(line)
    return 0
