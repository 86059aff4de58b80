"""``nbfleet token create|list|delete``: a project's own access tokens (for the API and for
opening notebooks in a browser). Creating and deleting need an operator token; the new
token's secret is printed once and never again."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from cli import output
from cli.args import add_output, label_pairs
from cli.client import Client
from common import wire

TOKEN_HEADERS = ["ID", "ROLE", "LABEL SELECTOR", "DESCRIPTION", "CREATED"]


def add_label_selector(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-selector",
        action="append",
        type=label_pairs("--label-selector"),
        default=[],
        metavar="KEY=VALUE",
        help="the token reaches only notebooks carrying this label (repeatable: all of them)",
    )


def add_token_parser(top) -> None:
    token = top.add_parser("token", help="your project's access tokens (API and browser)")
    tokens = token.add_subparsers(dest="action", required=True)
    create = tokens.add_parser(
        "create", help="a new token for your project (operator token; shown once)"
    )
    create.add_argument(
        "--role",
        choices=["read", "operator"],
        default="read",
        help="read: list, get, logs and open editors; operator: also run, start, stop, delete "
        "and exec (default: read)",
    )
    create.add_argument("--description", default="")
    add_label_selector(create)
    add_output(create)
    add_output(tokens.add_parser("list", help="your project's tokens (never their secrets)"))
    delete = tokens.add_parser("delete", help="delete a token: it stops working at once")
    delete.add_argument("id", help="token id from `nbfleet token list`")
    add_output(delete)


def cmd_token(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        body = wire.ProjectTokenCreate(
            role=args.role,
            description=args.description,
            label_selector=dict(args.label_selector),
        )
        created = client.call("POST", "/v1/tokens", wire.TokenCreated, body=body)
        print_created(created, args.output)
        return 0
    if args.action == "list":
        items = client.call("GET", "/v1/tokens", wire.TokenList).items
        if args.output == "json":
            output.print_json(items)
        else:
            output.table(TOKEN_HEADERS, token_rows(items))
        return 0
    if args.action == "delete":
        deleted = client.call("DELETE", f"/v1/tokens/{args.id}", wire.TokenInfo)
        if args.output == "json":
            output.print_json(deleted)
        else:
            print(f"token {deleted.id} ({deleted.role}) deleted; it no longer works anywhere")
        return 0
    raise AssertionError(args.action)


def print_created(created: wire.TokenCreated, fmt: str) -> None:
    if fmt == "json":
        output.print_json(created)
        return
    print(
        f"token {created.id} for project {created.project} ({created.role}); shown once, keep it:"
    )
    print(created.token)
    if created.label_selector:
        print(f"it reaches only notebooks labelled {selector(created.label_selector)}")


def selector(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def token_rows(items: Sequence[wire.TokenInfo]) -> list[list[Any]]:
    return [
        [
            t.id,
            t.role,
            selector(t.label_selector) or "-",
            t.description or "-",
            output.when(t.created_at),
        ]
        for t in items
    ]
