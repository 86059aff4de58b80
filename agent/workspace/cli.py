"""``nbfleet-agent workspace push|restore|list|gc``: operator access to workspace snapshots.

::

    nbfleet-agent workspace push DIR --bucket B --prefix P [--kind manual] [--json]
    nbfleet-agent workspace restore DIR --bucket B --prefix P [--snapshot ID] [--allow-older]
    nbfleet-agent workspace list --bucket B --prefix P [--json]
    nbfleet-agent workspace gc --bucket B --prefix P [--grace-s 3600] [--json]

``--prefix`` is where ``snapshots/``, ``packs/`` and ``chunks/`` live (a notebook's is
``<id>/workspace``); ``--notebook ID`` is a shorthand for that. The S3 endpoint and keys come
from ``--config`` (an agent.toml) if given, else from ``--endpoint`` / ``AWS_ENDPOINT_URL`` and
the usual ``AWS_*`` variables. The local index lives in ``--state-dir`` (default: the config's
``state_dir``, else ``$XDG_CACHE_HOME/nbfleet``). ``push`` accepts ``--keep-last`` /
``--keep-daily`` to apply retention afterwards. Every command prints one summary line, or with
``--json`` one JSON object (fields: see :func:`_push`, :func:`_restore`).
Exit status: 0 done, 1 failed (message on stderr), 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from agent.objectstore import S3ObjectStore
from agent.workspace import engine, retention
from agent.workspace.restore import restore
from common.config import AgentConfig, ConfigError, load


def add_parser(commands: Any) -> None:
    workspace = commands.add_parser("workspace", help="push, restore and list workspace snapshots")
    actions = workspace.add_subparsers(dest="action", required=True)
    for name, helptext in (
        ("push", "snapshot DIR"),
        ("restore", "restore a snapshot into DIR (which must not exist or be empty)"),
        ("list", "list snapshots"),
        ("gc", "delete objects no snapshot references (older than --grace-s)"),
    ):
        action = actions.add_parser(name, help=helptext)
        if name in ("push", "restore"):
            action.add_argument("dir")
        action.add_argument("--bucket", required=True)
        where = action.add_mutually_exclusive_group(required=True)
        where.add_argument("--prefix", help="e.g. NOTEBOOK/workspace")
        where.add_argument("--notebook", help="shorthand for --prefix NOTEBOOK/workspace")
        action.add_argument("--config", default=None, help="agent.toml with the S3 settings")
        action.add_argument("--endpoint", default="", help="S3 endpoint URL")
        action.add_argument("--state-dir", default=None, help="where the local index lives")
        action.add_argument("--concurrency", type=int, default=None)
        action.add_argument("--json", action="store_true", help="one JSON object on stdout")
        action.add_argument("--log-level", default="WARNING")
        if name == "push":
            action.add_argument(
                "--kind", default="manual", choices=["manual", "checkpoint", "stop", "fork"]
            )
            action.add_argument("--keep-last", type=int, default=None)
            action.add_argument("--keep-daily", type=int, default=None)
        if name == "restore":
            action.add_argument("--snapshot", default=None, help="snapshot id (default: newest)")
            action.add_argument(
                "--allow-older",
                action="store_true",
                help="when the newest snapshots' manifests do not decode, restore the newest "
                "readable one (named on stderr) instead of failing",
            )
        if name == "gc":
            action.add_argument("--grace-s", type=float, default=retention.GRACE_S)


def run(args: argparse.Namespace) -> int:
    try:
        config = (
            load(AgentConfig, args.config, env_prefix="NBFLEET_AGENT_") if args.config else None
        )
    except ConfigError as exc:
        print(f"nbfleet-agent: {exc}", file=sys.stderr)
        return 2
    try:
        summary, line = asyncio.run(_main(args, config))
    except Exception as exc:
        print(f"nbfleet-agent workspace {args.action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else line)
    return 0


async def _main(args: argparse.Namespace, config: AgentConfig | None) -> tuple[dict, str]:
    if config is not None:
        store = S3ObjectStore(
            args.endpoint or config.s3_endpoint,
            config.s3_region,
            config.s3_access_key,
            config.s3_secret_key,
        )
        concurrency = args.concurrency or max(config.sync_concurrency, 16)
        state_dir = args.state_dir or config.state_dir
    else:
        store = S3ObjectStore(args.endpoint, os.environ.get("AWS_REGION", "us-east-1"))
        concurrency = args.concurrency or 16
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        state_dir = args.state_dir or os.path.join(cache, "nbfleet")
    prefix = f"{args.notebook}/workspace/" if args.notebook else args.prefix.strip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    index_dir = os.path.join(state_dir, "workspace-index")
    try:
        if args.action == "push":
            return await _push(store, args, prefix, index_dir, concurrency)
        if args.action == "restore":
            return await _restore(store, args, prefix, index_dir, concurrency)
        if args.action == "list":
            items = await retention.list_snapshots(store, args.bucket, prefix)
            rows = [{f: getattr(i, f) for f in i.__struct_fields__} for i in items]
            lines = [
                f"{i.id}  {i.kind:<10} {_when(i.created_at)}  {i.files:>8} files  "
                f"{_size(i.logical_bytes):>10}  stored {_size(i.stored_bytes)}"
                for i in items
            ]
            return {"items": rows}, "\n".join(lines) or "no snapshots"
        deleted = await retention.collect_garbage(store, args.bucket, prefix, grace_s=args.grace_s)
        return {"deleted": deleted}, f"garbage collection deleted {deleted} objects"
    finally:
        await store.close()


async def _push(
    store: S3ObjectStore, args: argparse.Namespace, prefix: str, index_dir: str, concurrency: int
) -> tuple[dict, str]:
    """JSON: ``snapshot`` (SnapshotInfo fields), ``unchanged``, ``files``, ``bytes``,
    ``uploaded_bytes``, ``uploaded_objects``, ``reused_objects``, ``read_files``,
    ``read_bytes``, ``skipped_special``, ``skipped`` and ``unstable`` (paths, see
    :class:`~agent.workspace.engine.PushResult`), ``kept``, ``seconds``. Every skipped or
    still-changing path is also named on stderr."""
    started = time.monotonic()
    result = await engine.push(
        store,
        args.bucket,
        prefix,
        args.dir,
        index_dir=index_dir,
        kind=args.kind,
        concurrency=concurrency,
        create_bucket=True,
    )
    if args.keep_last is not None or args.keep_daily is not None:
        result.kept, _ = await retention.apply_retention(
            store,
            args.bucket,
            prefix,
            keep_last=args.keep_last if args.keep_last is not None else 5,
            keep_daily=args.keep_daily if args.keep_daily is not None else 7,
        )
    for skipped in result.skipped:
        print(f"nbfleet-agent workspace push: not saved: {skipped}", file=sys.stderr)
    for path in result.unstable:
        print(
            f"nbfleet-agent workspace push: {path!r} kept changing while read; "
            "its last complete read was saved",
            file=sys.stderr,
        )
    seconds = time.monotonic() - started
    summary = result.summary()
    summary["bytes"] = summary.pop("logical_bytes")
    summary["seconds"] = round(seconds, 3)
    line = (
        f"{'unchanged' if result.unchanged else 'pushed'} {result.snapshot.id}: "
        f"{result.files} files, {_size(result.logical_bytes)}, uploaded "
        f"{_size(result.uploaded_bytes)} in {result.uploaded_objects} objects"
        f"{f' (reused {result.reused_objects})' if result.reused_objects else ''}, "
        f"{seconds:.2f} s"
    )
    return summary, line


async def _restore(
    store: S3ObjectStore, args: argparse.Namespace, prefix: str, index_dir: str, concurrency: int
) -> tuple[dict, str]:
    """JSON: ``snapshot`` (SnapshotInfo fields), ``files``, ``dirs``, ``symlinks``,
    ``bytes``, ``downloaded_bytes``, ``requests``, ``hard_links``, ``skipped_snapshots``,
    ``seconds``. A prefix without a snapshot, or whose newest manifest does not decode (unless
    ``--allow-older``), fails naming the prefix and the unreadable snapshot."""
    started = time.monotonic()
    target = args.dir.rstrip("/")
    if os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target):
        os.rmdir(target)  # an empty target is as good as none
    result = await restore(
        store,
        args.bucket,
        prefix,
        target,
        snapshot=args.snapshot,
        concurrency=concurrency,
        index_dir=index_dir,
        allow_older=args.allow_older,
    )
    for skipped in result.skipped_snapshots:
        print(f"nbfleet-agent workspace restore: skipped unreadable {skipped}", file=sys.stderr)
    seconds = time.monotonic() - started
    info = result.snapshot
    summary = {
        "snapshot": None if info is None else {f: getattr(info, f) for f in info.__struct_fields__},
        "files": result.files,
        "dirs": result.dirs,
        "symlinks": result.symlinks,
        "bytes": result.bytes,
        "downloaded_bytes": result.downloaded_bytes,
        "requests": result.requests,
        "hard_links": result.hard_links,
        "skipped_snapshots": result.skipped_snapshots,
        "seconds": round(seconds, 3),
    }
    line = (
        f"restored {info.id if info else '(nothing)'}: {result.files} files, "
        f"{_size(result.bytes)}, downloaded {_size(result.downloaded_bytes)} in "
        f"{result.requests} requests, {seconds:.2f} s"
    )
    return summary, line


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
