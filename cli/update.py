"""``nbfleet notebook update ID``: change a notebook after ``run`` (``PUT /v1/notebooks/{id}``).

Only what is given changes. Labels and environment variables are edited one key at a time
(``--label k=v`` sets, ``--unset-label k`` removes), so the command reads the notebook first
and sends the whole new map; SSH keys and volumes are replaced as a whole (``--ssh-public-keys``
and ``--volume`` repeated, or ``--clear-...``). What waits for a restart is said on stderr.
"""

from __future__ import annotations

import argparse
import sys

from msgspec import UNSET

from cli import output, ssh, volumes
from cli.args import BadArguments, idle_timeout, label_pairs, pairs
from cli.client import Client
from common import wire

ACTIONS = ("update",)

#: Options sent as given, when given (their ``NotebookUpdate`` fields have the same names).
_AS_GIVEN = ("name", "restart_on_timeout", "unsecure_http", "gpu", "cpu", "framework_version")


def add_update_parser(nbs, add_output) -> None:
    up = nbs.add_parser(
        "update",
        help="change a notebook: labels, SSH keys, access and env vars at any time; "
        "resources, framework version and volumes while it is stopped",
    )
    up.add_argument("id")
    up.add_argument("--name")
    up.add_argument(
        "--label", action="append", type=label_pairs("--label"), default=[], help="set k=v"
    )
    up.add_argument("--unset-label", action="append", default=[], metavar="KEY")
    up.add_argument(
        "--envvar",
        action="append",
        type=pairs("--envvar"),
        default=[],
        help="set K=V (the container gets it at its next start)",
    )
    up.add_argument("--unset-envvar", action="append", default=[], metavar="NAME")
    ssh.add_key_option(up, "replace the SSH keys with these (repeatable)")
    up.add_argument("--clear-ssh-keys", action="store_true", help="remove every SSH key")
    up.add_argument("--restart-on-timeout", action=argparse.BooleanOptionalAction, default=None)
    up.add_argument(
        "--unsecure-http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="public editor, no token asked (--no-unsecure-http: tokens again)",
    )
    up.add_argument(
        "--idle-timeout",
        type=idle_timeout("--idle-timeout", off=True),
        metavar="DURATION|off",
        help="stop after this long idle (off: the project's idle timeout applies)",
    )
    up.add_argument("--gpu", type=int, help="while stopped")
    up.add_argument("--cpu", type=int, help="while stopped")
    up.add_argument("--flavor", help="while stopped ('' for none)")
    up.add_argument("--framework-version", metavar="VERSION", help="while stopped")
    volumes.add_volume_option(up)
    up.add_argument(
        "--clear-volumes", action="store_true", help="while stopped: detach every volume"
    )
    add_output(up)


def update_request(client: Client, args: argparse.Namespace) -> wire.NotebookUpdate:
    """The body for what the options ask; reads the notebook when a map is edited."""
    body = wire.NotebookUpdate()
    if args.label or args.unset_label or args.envvar or args.unset_envvar:
        current = client.call("GET", f"/v1/notebooks/{args.id}", wire.Notebook)
        if args.label or args.unset_label:
            body.labels = _edited(current.labels, args.label, args.unset_label, "--unset-label")
        if args.envvar or args.unset_envvar:
            body.envvars = _edited(
                current.envvars, args.envvar, args.unset_envvar, "--unset-envvar"
            )
    keys = ssh.keys_of(args)
    if keys and args.clear_ssh_keys:
        raise BadArguments("--ssh-public-keys and --clear-ssh-keys cannot go together")
    if keys or args.clear_ssh_keys:
        body.ssh_public_keys = keys
    for field in _AS_GIVEN:
        if getattr(args, field) is not None:
            setattr(body, field, getattr(args, field))
    # "" and off: none (the project's idle timeout, no flavor).
    if args.idle_timeout is not None:
        body.idle_timeout_s = args.idle_timeout or None
    if args.flavor is not None:
        body.flavor = args.flavor or None
    if args.volume and args.clear_volumes:
        raise BadArguments("--volume and --clear-volumes cannot go together")
    if args.volume or args.clear_volumes:
        body.volumes = list(args.volume)
    if all(getattr(body, f) is UNSET for f in body.__struct_fields__):
        raise BadArguments("nothing to change: give at least one option (see --help)")
    return body


def _edited(
    current: dict[str, str], sets: list[tuple[str, str]], unsets: list[str], flag: str
) -> dict[str, str]:
    edited = dict(current)
    for key in unsets:
        if key not in edited:
            raise BadArguments(f"{flag} {key}: the notebook has no {key!r}")
        del edited[key]
    edited.update(sets)
    return edited


def cmd_update(client: Client, args: argparse.Namespace) -> int:
    body = update_request(client, args)
    nb = client.call("PUT", f"/v1/notebooks/{args.id}", wire.Notebook, body=body)
    if args.output == "json":
        output.print_json(nb)
    else:
        output.notebook_detail(nb)
    if nb.pending_restart:
        sys.stderr.write(
            f"{', '.join(nb.pending_restart)} changed while the notebook runs: its container "
            f"gets them at its next start (`nbfleet notebook stop {nb.id}` then `start`)\n"
        )
    return 0
