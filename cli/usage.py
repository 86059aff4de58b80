"""``nbfleet usage`` and ``nbfleet admin usage``: what was used over a period, per group, as a
table for people, the report as is in JSON, or CSV for spreadsheets.

The period is passed to the scheduler as typed (unix seconds or ISO 8601): it alone parses
times, so the CLI and the API cannot disagree about what ``2026-11-01`` means.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from cli import output
from cli.args import BadArguments
from cli.client import Client
from common import wire
from common.usage_text import gpu_models, write_csv

USER_GROUPS = ("notebook", "flavor", "label")
ADMIN_GROUPS = ("project", *USER_GROUPS)


def add_usage_options(
    p: argparse.ArgumentParser, groups: tuple[str, ...], default_group: str, project_help: str
) -> None:
    p.add_argument("--project", help=project_help)
    p.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="unix seconds or ISO 8601 (2026-11-01, 2026-11-01T12:00:00Z); "
        "default: the start of the current month (UTC)",
    )
    p.add_argument("--to", dest="end", metavar="TIME", help="same forms as --from; default: now")
    p.add_argument("--group-by", choices=groups, default=default_group)
    p.add_argument(
        "--label-key", metavar="KEY", help="with --group-by label: the label whose values group"
    )
    p.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")


def usage_query(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The query string shared by both usage endpoints (``project`` is the caller's to add)."""
    if args.group_by == "label" and not args.label_key:
        raise BadArguments("--group-by label needs --label-key KEY (the label to group by)")
    if args.label_key and args.group_by != "label":
        raise BadArguments(f"--label-key only applies to --group-by label, not {args.group_by}")
    query = [("group_by", args.group_by)]
    if args.label_key:
        query.append(("label_key", args.label_key))
    if args.start:
        query.append(("from", args.start))
    if args.end:
        query.append(("to", args.end))
    return query


def cmd_usage(client: Client, args: argparse.Namespace) -> int:
    """``nbfleet usage``: the caller's project, named by ``--project`` or asked of the
    scheduler (``GET /v1/quota`` names the token's project)."""
    query = usage_query(args)
    project = args.project or client.call("GET", "/v1/quota", wire.Project).name
    report = client.call("GET", f"/v1/projects/{project}/usage", wire.UsageReport, query=query)
    show(report, args.output, args.label_key, title=f"project {project}")
    return 0


def cmd_admin_usage(client: Client, args: argparse.Namespace) -> int:
    query = usage_query(args)
    if args.project:
        query.append(("project", args.project))
    report = client.call("GET", "/v1/admin/usage", wire.UsageReport, query=query)
    title = f"project {args.project}" if args.project else "all projects"
    show(report, args.output, args.label_key, title=title)
    return 0


# ---------------------------------------------------------------- rendering


def show(
    report: wire.UsageReport,
    fmt: str,
    label_key: str | None = None,
    *,
    title: str = "",
    out: TextIO | None = None,
) -> None:
    out = out or sys.stdout
    if fmt == "json":
        output.print_json(report, out)
    elif fmt == "csv":
        write_csv(report, out)
    else:
        write_table(report, label_key, title, out)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def write_table(report: wire.UsageReport, label_key: str | None, title: str, out: TextIO) -> None:
    models = gpu_models(report)
    group = f"LABEL {label_key}" if report.group_by == "label" and label_key else None
    headers = [
        group or report.group_by.upper(),
        "NOTEBOOKS",
        "MINUTES",
        *(f"GPU-MIN {m}" for m in models),
        "CPU-MIN",
        "STORAGE GB-H",
        "BILLABLE GB-H",
    ]

    def cells(name: str, row: wire.UsageRow) -> list[Any]:
        return [
            name,
            f"{row.notebooks:,}",
            f"{row.minutes:,}",
            *(f"{row.gpu_minutes.get(m, 0):,}" for m in models),
            f"{row.cpu_minutes:,}",
            f"{row.storage_gb_hours:,.1f}",
            f"{row.billable_storage_gb_hours:,.1f}",
        ]

    heading = f"Usage of {title}, " if title else "Usage, "
    out.write(f"{heading}{_utc(report.start)} to {_utc(report.end)} UTC\n\n")
    rows = [cells(row.group, row) for row in report.items]
    rows.append(cells("TOTAL", report.total))
    output.table(headers, rows, out, numeric=range(1, len(headers)))
