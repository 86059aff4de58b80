"""Listing snapshots, retention and garbage collection.

* ``list_snapshots`` reads each manifest's user metadata (one HEAD per snapshot; retention keeps
  them few), falling back to the manifest itself.
* ``select_kept(ids, keep_last, keep_daily, now)``: the newest ``keep_last`` ids, plus the
  newest id of each of the last ``keep_daily`` UTC days (today included). Pure.
* ``apply_retention`` deletes the manifests of the others and returns the kept ids (oldest
  first). A snapshot is gone once its manifest is; its objects go at the next GC.
* ``collect_garbage`` deletes packs and chunks no remaining manifest references **and** older
  than ``grace_s`` (default one hour), so a push in progress, or the resumable leftovers of a
  killed one, are never taken. It reads every manifest first and deletes nothing if one cannot
  be read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from agent.objectstore import ObjectStore
from agent.workspace import manifest as mf
from agent.workspace.engine import CorruptManifest, load_manifest, snapshot_ids
from agent.workspace.workers import run_all
from common.wire import SnapshotInfo

log = logging.getLogger(__name__)

GRACE_S = 3600.0


async def list_snapshots(store: ObjectStore, bucket: str, prefix: str) -> list[SnapshotInfo]:
    """Committed snapshots, oldest first."""
    base = prefix + mf.SNAPSHOTS
    infos: list[SnapshotInfo] = []
    missing: list[str] = []
    for obj in await store.list(bucket, base, metadata=True):
        snapshot_id = obj.key[len(base) :]
        if mf.snapshot_time(snapshot_id) <= 0 or "/" in snapshot_id:
            continue
        info = mf.info_from_metadata(snapshot_id, obj.metadata)
        if info is None:
            missing.append(snapshot_id)
        else:
            infos.append(info)

    async def from_manifest(snapshot_id: str) -> None:
        try:
            manifest, _ = await load_manifest(store, bucket, prefix, snapshot_id)
        except CorruptManifest as exc:
            log.warning("prefix=%s not listing a snapshot: %s", prefix, exc)
            return
        infos.append(manifest.info())

    await run_all(from_manifest(snapshot_id) for snapshot_id in missing)
    return sorted(infos, key=lambda info: info.id)


class _Unsure(Exception):
    """Garbage collection cannot tell what is referenced."""


def select_kept(ids: list[str], keep_last: int, keep_daily: int, now: float) -> list[str]:
    ordered = sorted(ids)
    kept = set(ordered[-keep_last:] if keep_last > 0 else [])
    today = datetime.fromtimestamp(now, UTC).date()
    newest_of_day: dict[object, str] = {}
    for snapshot_id in ordered:
        day = datetime.fromtimestamp(mf.snapshot_time(snapshot_id), UTC).date()
        newest_of_day[day] = snapshot_id  # ordered: the last one seen is the newest
    for day, snapshot_id in newest_of_day.items():
        if 0 <= (today - day).days < keep_daily:  # type: ignore[operator]
            kept.add(snapshot_id)
    return sorted(kept)


async def apply_retention(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    *,
    keep_last: int,
    keep_daily: int,
    now: float | None = None,
) -> tuple[list[str], list[str]]:
    """``(kept, dropped)`` ids; the dropped manifests are deleted."""
    ids = await snapshot_ids(store, bucket, prefix)
    kept = select_kept(ids, max(1, keep_last), keep_daily, time.time() if now is None else now)
    keep = set(kept)
    dropped = [snapshot_id for snapshot_id in ids if snapshot_id not in keep]
    if dropped:
        await store.delete(bucket, [prefix + mf.SNAPSHOTS + s for s in dropped])
        log.info("prefix=%s retention dropped %d snapshots: %s", prefix, len(dropped), dropped)
    return kept, dropped


async def collect_garbage(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    *,
    grace_s: float = GRACE_S,
    now: float | None = None,
) -> int:
    """Delete unreferenced packs and chunks older than ``grace_s``; returns how many."""
    now = time.time() if now is None else now
    ids = await snapshot_ids(store, bucket, prefix)
    referenced: set[str] = set()
    limit = asyncio.Semaphore(8)

    async def read(snapshot_id: str) -> None:
        async with limit:
            try:
                manifest, _ = await load_manifest(store, bucket, prefix, snapshot_id)
            except CorruptManifest as exc:
                # What it references cannot be known: collect nothing this time.
                raise _Unsure(str(exc)) from exc
        for blob in manifest.blobs.values():
            referenced.add(blob.key)
            if blob.key.startswith(mf.PACKS):
                referenced.add(blob.key + mf.IDX_SUFFIX)

    try:
        await run_all(read(snapshot_id) for snapshot_id in ids)
    except _Unsure as exc:
        log.warning("prefix=%s garbage collection skipped: %s", prefix, exc)
        return 0
    doomed: list[str] = []
    for base in (mf.PACKS, mf.CHUNKS):
        for obj in await store.list(bucket, prefix + base):
            key = obj.key[len(prefix) :]
            if key not in referenced and obj.modified and now - obj.modified > grace_s:
                doomed.append(obj.key)
    if doomed:
        await store.delete(bucket, doomed)
        log.info("prefix=%s garbage collection deleted %d objects", prefix, len(doomed))
    return len(doomed)
