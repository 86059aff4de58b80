"""``nbfleet notebook datasync ID [--volume ALIAS|PATH] [--direction push|pull]``: a RUNNING
notebook's volumes pushed to their buckets now (``rw`` and ``rwd``; or new objects pulled into
them), without stopping it, like OVH's ``ovhai notebook datasync``.

Progress goes to stderr while it runs (one line rewritten in place on a terminal, a line per
step otherwise), then a summary per volume to stdout (``-o json``: the ``DatasyncResult``).
Exit status 0 when every volume synced (files left out, such as conflicts kept or files still
being written, are named in the summary), 1 when the scheduler refused it or a volume failed.
Interrupting the command does not stop the datasync: it finishes in the agent.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TextIO

import msgspec

from cli import output
from cli.args import add_output
from cli.client import Client
from common import wire
from common.errors import ApiError

ACTIONS = ("datasync",)
#: A line per this many percent on a stream that is not a terminal.
STEP_PCT = 10


def add_datasync_parser(nbs) -> None:
    """``datasync`` under ``nbfleet notebook``."""
    p = nbs.add_parser(
        "datasync",
        help="push a RUNNING notebook's rw/rwd volumes to their buckets now, or pull new "
        "objects into its volumes (--direction pull), without stopping it",
    )
    p.add_argument("id")
    p.add_argument(
        "--volume",
        metavar="ALIAS|PATH",
        help="only the volumes of this datastore alias (or container@alias, or mount path); "
        "default: every volume the direction applies to",
    )
    p.add_argument(
        "--direction",
        choices=["push", "pull"],
        default="push",
        help="push (default): upload what changed (rwd: and delete what was deleted); pull: "
        "download what is new or changed in the bucket, keeping files you changed",
    )
    add_output(p)


class ProgressLine:
    """Progress on ``out``: rewritten in place on a terminal, else a line per phase, volume or
    :data:`STEP_PCT` percent."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last: tuple[str, str, int] | None = None
        self._width = 0

    def show(self, p: wire.Progress) -> None:
        text = output.progress(p)
        pct = 100 * p.bytes_done // p.bytes_total if p.bytes_total else 0
        if self.tty:
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.out.flush()
            return
        step = (p.phase, p.detail, pct // STEP_PCT)
        if step != self._last:
            self.out.write(f"{output.when(p.at)}  {text}\n")
            self._last = step

    def close(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")


def events(chunks: Iterator[bytes]) -> Iterator[wire.DatasyncProgress | wire.DatasyncResult]:
    """The stream's ``DatasyncEvent`` lines, as they arrive."""
    decoder = msgspec.json.Decoder(wire.DatasyncEvent)
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield decoder.decode(line)
    if pending.strip():
        yield decoder.decode(pending)


def cmd_datasync(client: Client, args: argparse.Namespace) -> int:
    body = wire.DatasyncRequest(volume=args.volume, direction=args.direction)
    shown = ProgressLine(sys.stderr) if args.output == "table" else None
    result: wire.DatasyncResult | None = None
    stream = client.stream(f"/v1/notebooks/{args.id}/datasync", method="POST", body=body)
    try:
        for event in events(stream):
            if isinstance(event, wire.DatasyncResult):
                result = event
            elif shown is not None:
                shown.show(event.progress)
    except (OSError, msgspec.DecodeError) as exc:
        raise ApiError(
            "upstream_unavailable",
            f"the datasync stream broke off ({exc}); the datasync goes on: "
            f"`nbfleet notebook get {args.id}` shows its progress",
        )
    finally:
        if shown is not None:
            shown.close()
    if result is None:
        raise ApiError(
            "upstream_unavailable",
            f"the scheduler ended the datasync stream without a result; `nbfleet notebook get "
            f"{args.id}` shows whether it still runs",
        )
    if args.output == "json":
        output.print_json(result)
    else:
        summary(result)
    if not result.ok:
        sys.stderr.write(f"nbfleet: datasync failed: {result.error}\n")
        return 1
    return 0


def summary(result: wire.DatasyncResult, out: TextIO | None = None) -> None:
    """A row per volume, then what was left out and why."""
    out = out or sys.stdout
    moved = "UPLOADED" if result.direction == "push" else "DOWNLOADED"
    output.table(
        ["VOLUME", moved, "SIZE", "DELETED", "UNCHANGED", "CONFLICTS", "UNSTABLE", "SKIPPED"],
        [
            [
                v.volume,
                v.files,
                output.size(v.bytes),
                v.deleted,
                v.unchanged,
                v.conflicts,
                v.unstable,
                v.skipped,
            ]
            for v in result.volumes
        ],
        out,
        numeric={1, 2, 3, 4, 5, 6, 7},
    )
    for v in result.volumes:
        if v.error:
            out.write(f"{v.volume}: FAILED: {v.error}\n")
        for detail in v.details:
            out.write(f"{v.volume}: {detail}\n")
        more = v.conflicts + v.unstable + v.skipped - len(v.details)
        if v.details and more > 0:
            out.write(f"{v.volume}: ... and {more} more\n")
