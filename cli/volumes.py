"""``--volume container@alias[/prefix]:/mount/path[:ro|rw|rwd]`` and ``nbfleet datastore``.

:func:`parse_volume` turns the string into a :class:`wire.Volume`, checking each part against
the API's own constraints so a mistake is reported naming the part, before any request.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli import output
from cli.client import Client
from common import wire
from common.volume_spec import (  # noqa: F401 (re-exported for the CLI's tests)
    FORMAT,
    PERMISSIONS,
    VolumeSyntaxError,
    format_volume,
    parse_volume,
)


def volume_arg(text: str) -> wire.Volume:
    """argparse ``type`` for ``--volume``."""
    try:
        return parse_volume(text)
    except VolumeSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def add_volume_option(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--volume",
        action="append",
        type=volume_arg,
        default=[],
        metavar="VOLUME",
        help=f"mount data from a datastore: {FORMAT} (default ro; repeatable)",
    )


# ---------------------------------------------------------------- nbfleet datastore


def add_datastore_parser(top, add_output) -> None:
    """``nbfleet datastore add|list|delete`` under the top-level subparsers ``top``."""
    ds = top.add_parser("datastore", help="S3 datastores that notebook volumes mount from")
    dss = ds.add_subparsers(dest="action", required=True)
    add = dss.add_parser("add", help="register an S3 endpoint and credentials under an alias")
    add.add_argument("alias")
    add.add_argument("--endpoint", required=True, help="S3 endpoint URL (https://...)")
    add.add_argument("--region", default="us-east-1")
    add.add_argument("--access-key", help="default: AWS_ACCESS_KEY_ID")
    add.add_argument("--secret-key", help="default: AWS_SECRET_ACCESS_KEY")
    add_output(add)
    add_output(dss.add_parser("list", help="list the project's datastores"))
    delete = dss.add_parser("delete", help="delete a datastore no notebook uses")
    delete.add_argument("alias")
    add_output(delete)


def cmd_datastore(client: Client, args: argparse.Namespace) -> int:
    fmt = args.output
    if args.action == "add":
        access_key = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret_key = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        missing = [
            flag
            for flag, value, env in [
                ("--access-key", access_key, "AWS_ACCESS_KEY_ID"),
                ("--secret-key", secret_key, "AWS_SECRET_ACCESS_KEY"),
            ]
            if not value
        ]
        if missing:
            sys.stderr.write(
                f"nbfleet: datastore add needs {' and '.join(missing)} "
                "(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment)\n"
            )
            return 2
        body = wire.DatastoreCreate(
            alias=args.alias,
            endpoint=args.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            region=args.region,
        )
        created = client.call("POST", "/v1/datastores", wire.Datastore, body=body)
        if fmt == "json":
            output.print_json(created)
        else:
            print(f"datastore {created.alias} added ({created.endpoint}, {created.region})")
        return 0
    if args.action == "list":
        items = client.call("GET", "/v1/datastores", wire.DatastoreList).items
        if fmt == "json":
            output.print_json(items)
        else:
            output.table(
                ["ALIAS", "ENDPOINT", "REGION", "CREATED"],
                [[d.alias, d.endpoint, d.region, output.when(d.created_at)] for d in items],
            )
        return 0
    if args.action == "delete":
        gone = client.call("DELETE", f"/v1/datastores/{args.alias}", wire.Datastore)
        if fmt == "json":
            output.print_json(gone)
        else:
            print(f"datastore {gone.alias} deleted")
        return 0
    raise AssertionError(args.action)
