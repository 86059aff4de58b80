"""scripts/bench-sync's "agent" contender: the snapshot engine in a long-lived process, stepped
the way the agent daemon steps a notebook's stop and start.

The agent daemon pays its start-up (imports, the S3 client, the first connection) once, long
before any notebook stops; what a user's STOPPING costs is only its push, and what a start
costs is its restore. This process does what the daemon does for them, through the same
:class:`agent.workspace.host.HostWorkspaces` with the agent's default settings (concurrency,
retention): a push of notebook ``N`` snapshots ``<workspaces>/N`` and applies retention; a
restore brings ``N``'s newest snapshot into another host's ``<workspaces>/N`` and seeds that
host's local index, as a start on another host does.

Protocol, one JSON object per line each way. The S3 endpoint, keys and region come from the
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...); the bucket is the one argument.
Once the client is up (it has listed the bucket) it prints ``{"ready": true}``. Then, for each
``{"op": "push" | "restore", "workspaces": DIR, "notebook": ID}`` read, it answers
``{"seconds": S, "summary": {...}}`` or ``{"error": "..."}``; ``"op": "floor"`` (with
``"tree"``, the restored dir) measures what the S3 server and the disk allow a restore (see
:func:`floor`). End of input ends it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from agent.objectstore import S3ObjectStore
from agent.workspace.host import HostWorkspaces, workspace_prefix
from common.config import AgentConfig


async def serve(bucket: str) -> None:
    defaults = AgentConfig()
    store = S3ObjectStore(
        os.environ.get("AWS_ENDPOINT_URL", ""),
        os.environ.get("AWS_REGION", defaults.s3_region),
        os.environ.get("AWS_ACCESS_KEY_ID", ""),
        os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    )
    hosts: dict[str, HostWorkspaces] = {}

    def host(workspaces: str) -> HostWorkspaces:
        if workspaces not in hosts:
            hosts[workspaces] = HostWorkspaces(
                store,
                bucket,
                workspaces,
                workspaces + ".scratch",
                concurrency=defaults.sync_concurrency,
                retention_last=defaults.retention_last,
                retention_daily=defaults.retention_daily,
            )
        return hosts[workspaces]

    loop = asyncio.get_running_loop()
    try:
        await store.ensure_bucket(bucket)
        await store.list(bucket, "warm-up/")
        print(json.dumps({"ready": True}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            request = json.loads(line)
            started = time.perf_counter()
            try:
                summary = await step(host(request["workspaces"]), request)
            except Exception as exc:  # reported to the bench, which fails the step
                reply: dict = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                reply = {"seconds": time.perf_counter() - started, "summary": summary}
            print(json.dumps(reply), flush=True)
    finally:
        await store.close()


async def step(workspaces: HostWorkspaces, request: dict) -> dict:
    notebook = request["notebook"]
    if request["op"] == "push":
        result = await workspaces.push(notebook)
        if result is None:
            raise FileNotFoundError(f"no workspace {workspaces.workspace_dir(notebook)}")
        return {"unchanged": result.unchanged, **result.summary()}
    if request["op"] == "restore":
        target = workspaces.workspace_dir(notebook)
        if os.path.isdir(target) and not os.listdir(target):
            os.rmdir(target)  # the bench made it; a start finds none
        restored = await workspaces.restore(notebook)
        return {"files": restored.files, "bytes": restored.bytes}
    if request["op"] == "floor":
        return await floor(workspaces, notebook, request["tree"])
    raise ValueError(f"unknown op {request['op']!r}")


async def floor(workspaces: HostWorkspaces, notebook: str, tree: str) -> dict:
    """What the S3 server and the disk allow a restore of ``notebook``'s snapshot, each alone:
    every object under its prefix fetched into memory, ``sync_concurrency`` GETs at a time
    (one client, like the restore); and the files of ``tree`` (the restored workspace) written
    again from memory into a new directory by as many threads (no fsync, like the restore)."""
    store, bucket = workspaces.store, workspaces.bucket
    concurrency = workspaces.concurrency
    objects = await store.list(bucket, workspace_prefix(notebook))
    limit = asyncio.Semaphore(concurrency)

    async def fetch(key: str) -> int:
        async with limit:
            return len(await store.get_bytes(bucket, key))

    started = time.perf_counter()
    fetched = await asyncio.gather(*(fetch(o.key) for o in objects))
    s3_seconds = time.perf_counter() - started

    files: list[tuple[str, bytes]] = []
    dirs: list[str] = []
    for root, subdirs, names in os.walk(tree):
        rel = os.path.relpath(root, tree)
        dirs += [os.path.normpath(os.path.join(rel, d)) for d in subdirs]
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    files.append((os.path.normpath(os.path.join(rel, name)), f.read()))
    target = tree.rstrip("/") + ".floor"
    shutil.rmtree(target, ignore_errors=True)

    def write(item: tuple[str, bytes]) -> None:
        with open(os.path.join(target, item[0]), "wb") as f:
            f.write(item[1])

    os.sync()
    started = time.perf_counter()
    os.mkdir(target)
    for d in dirs:
        os.mkdir(os.path.join(target, d))
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(write, files))
    disk_seconds = time.perf_counter() - started
    shutil.rmtree(target)
    return {
        "s3_seconds": s3_seconds,
        "objects": len(objects),
        "object_bytes": sum(fetched),
        "disk_seconds": disk_seconds,
        "files": len(files),
        "file_bytes": sum(len(data) for _, data in files),
        "concurrency": concurrency,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: agent_sync.py BUCKET")
    asyncio.run(serve(sys.argv[1]))
