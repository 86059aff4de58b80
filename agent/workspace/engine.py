"""Pushing a workspace directory as an incremental, content-addressed snapshot.

``await push(store, bucket, prefix, directory, index_dir=..., kind=...) -> PushResult``:

1. One LIST of ``snapshots/`` finds the parent (the newest snapshot) while a thread walks the
   directory with ``lstat`` (:mod:`agent.workspace.scan`). The parent manifest comes from the
   local index's copy when it is the same snapshot, else one GET.
2. Files whose ``(size, mtime_ns, inode, ctime_ns)`` match the local index and whose contents
   the parent stores are not read. If nothing else changed either, the push is **unchanged**:
   no object is written and the parent's :class:`~common.wire.SnapshotInfo` is returned with
   ``PushResult.unchanged`` set (a no-change push costs that LIST and a stat walk). Files
   too recently modified for the index to trust are re-read; if they turn out identical the
   push is still unchanged.
3. Otherwise what a killed push left behind is found first (one LIST of ``packs/``, the
   ``.idx`` of every pack no manifest references, one LIST of ``chunks/`` when large files
   changed) so none of it is uploaded again. Changed small files are read, hashed and
   compressed a pack at a time in worker threads and uploaded as ``packs/<id>`` then
   ``packs/<id>.idx``; changed large files are cut into :data:`CHUNK_SIZE` chunks uploaded as
   ``chunks/<content id>`` unless stored already. Uploads run ``concurrency`` at a time.
4. The manifest is put last, conditionally (``If-None-Match: *``): until then the previous
   snapshot is the newest and intact, whatever fails or is killed. Then the local index is
   replaced.

Retention and garbage collection are separate steps (:mod:`agent.workspace.retention`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import zstandard

from agent.objectstore import AlreadyExists, ObjectStore
from agent.workspace import manifest as mf
from agent.workspace.manifest import CHUNK_SIZE, SNAPSHOTS, Blob
from agent.workspace.packer import (
    Version,
)
from agent.workspace.progress import ProgressCallback, Reporter
from agent.workspace.scan import LocalIndex, Scanned, ScanResult, index_row, scan
from agent.workspace.uploads import Uploads
from agent.workspace.workers import executor, run_all
from common.wire import SnapshotInfo

log = logging.getLogger(__name__)


class CorruptManifest(Exception):
    """A manifest object that does not decode: on stores where a killed PUT can leave a
    truncated object behind, it is not a snapshot, and the one before it is the newest."""


#: Small files are packed in batches of about this many raw bytes (packs end up 1/3 to 1/1 of
#: it after compression).
PACK_RAW_TARGET = 48 * 1024 * 1024
MAX_PACK_FILES = 10_000


@dataclass
class PushResult:
    snapshot: SnapshotInfo
    #: Nothing changed since ``snapshot`` (the parent): no object was written.
    unchanged: bool
    files: int
    logical_bytes: int
    read_files: int
    read_bytes: int
    uploaded_objects: int
    uploaded_bytes: int
    #: Packs and chunks an interrupted push had finished, reused instead of uploaded again.
    reused_objects: int
    #: How many entries were not saved (``len(skipped)``).
    skipped_special: int
    seconds: float
    #: Snapshot ids retention kept (filled in by the caller that applied retention).
    kept: list[str] = field(default_factory=list)
    #: ``"path: why"`` for every entry not saved: FIFOs, sockets and devices, and paths that
    #: were swapped for a link or another file between the scan and the read.
    skipped: list[str] = field(default_factory=list)
    #: Files that kept changing while read: the snapshot holds their last complete read.
    unstable: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data["snapshot"] = {f: getattr(self.snapshot, f) for f in self.snapshot.__struct_fields__}
        return data


async def latest_snapshot_id(store: ObjectStore, bucket: str, prefix: str) -> str | None:
    ids = await snapshot_ids(store, bucket, prefix)
    return ids[-1] if ids else None


async def snapshot_ids(store: ObjectStore, bucket: str, prefix: str) -> list[str]:
    """Committed snapshot ids, oldest first."""
    base = prefix + SNAPSHOTS
    names = [info.key[len(base) :] for info in await store.list(bucket, base)]
    return sorted(name for name in names if mf.snapshot_time(name) > 0 and "/" not in name)


async def load_manifest(
    store: ObjectStore, bucket: str, prefix: str, snapshot_id: str, cached: bytes | None = None
) -> tuple[mf.Manifest, bytes]:
    data = cached
    if data is None:
        data = await store.get_bytes(bucket, prefix + SNAPSHOTS + snapshot_id)
    try:
        manifest = await asyncio.get_running_loop().run_in_executor(executor(), mf.decode, data)
    except (zstandard.ZstdError, msgspec.DecodeError, ValueError) as exc:
        raise CorruptManifest(f"manifest of snapshot {snapshot_id} does not decode: {exc}") from exc
    return manifest, data


async def newest_readable(
    store: ObjectStore, bucket: str, prefix: str, ids: list[str] | None = None
) -> tuple[str | None, mf.Manifest | None, bytes, list[str]]:
    """The newest snapshot whose manifest decodes: ``(id, manifest, bytes, skipped)``, where
    ``skipped`` names the newer ones that do not decode (``"id: why"``); id and manifest are
    ``None`` when none decodes or there is none."""
    skipped: list[str] = []
    for snapshot_id in reversed(
        ids if ids is not None else await snapshot_ids(store, bucket, prefix)
    ):
        try:
            manifest, data = await load_manifest(store, bucket, prefix, snapshot_id)
        except CorruptManifest as exc:
            log.warning("prefix=%s %s; using the snapshot before it", prefix, exc)
            skipped.append(str(exc))
            continue
        return snapshot_id, manifest, data, skipped
    return None, None, b"", skipped


def _scan_with_index(directory: str, index: LocalIndex) -> ScanResult:
    index.load()
    return scan(directory)


def _hard_links(scanned: list[Scanned]) -> dict[str, str]:
    """Each further path of a file with several links in the tree → the first such path."""
    first: dict[tuple[int, int], str] = {}
    links: dict[str, str] = {}
    for entry in scanned:
        if entry.kind == "f" and entry.nlink > 1:
            key = (entry.dev, entry.ino)
            if key in first:
                links[entry.path] = first[key]
            else:
                first[key] = entry.path
    return links


async def push(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    directory: str,
    *,
    index_dir: str,
    kind: mf.Kind = "manual",
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
    progress_phase: str = "push",
    create_bucket: bool = False,
) -> PushResult:
    """Snapshot ``directory`` under ``prefix`` (ending in ``/`` or empty). Raises the store's
    error on failure, leaving the previous snapshot the newest. With ``create_bucket`` the
    bucket is created when there is no snapshot yet (no extra request otherwise)."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"workspace directory {directory} does not exist")
    index = LocalIndex(index_dir, bucket, prefix)
    scanning = loop.run_in_executor(executor(), _scan_with_index, directory, index)
    try:
        parent_id = await latest_snapshot_id(store, bucket, prefix)
    except BaseException:
        await asyncio.gather(scanning, return_exceptions=True)
        raise
    tree = await scanning
    scanned = tree.entries
    if parent_id is None and create_bucket:
        await store.ensure_bucket(bucket)
    parent: mf.Manifest | None = None
    parent_bytes = b""
    if parent_id is not None:
        try:
            parent, parent_bytes = await load_manifest(
                store, bucket, prefix, parent_id, index.cached_manifest(parent_id)
            )
        except CorruptManifest as exc:
            log.warning("prefix=%s %s; using the snapshot before it", prefix, exc)
            ids = await snapshot_ids(store, bucket, prefix)
            parent_id, parent, parent_bytes, _ = await newest_readable(
                store, bucket, prefix, [i for i in ids if i < parent_id]
            )
    known: dict[str, Blob] = dict(parent.blobs) if parent is not None else {}

    links = _hard_links(scanned)
    chunks_of: dict[str, tuple[str, ...]] = {}
    versions: dict[str, Version] = {}
    small: list[Scanned] = []
    large: list[Scanned] = []
    for entry in scanned:
        if entry.kind != "f" or entry.path in links:
            continue
        if entry.size == 0:
            chunks_of[entry.path] = ()
            continue
        hit = index.lookup(entry)
        if hit is not None and all(cid in known for cid in hit if cid):
            chunks_of[entry.path] = tuple(hit)
        elif entry.size <= CHUNK_SIZE:
            small.append(entry)
        else:
            large.append(entry)

    # The notebook's user owns the workspace once a container ran in it: read as that user.
    owner = (tree.root_uid, tree.root_gid) if tree.root_uid != 0 else None
    job = Uploads(store, bucket, prefix, directory, known, concurrency, owner)
    job.skipped.extend(tree.skipped)
    root = (tree.root_mode, tree.root_mtime_ns)
    if parent is not None and not small and not large:
        entries = _entries(scanned, chunks_of, versions, links)
        if entries == parent.entries and root == (parent.root_mode, parent.root_mtime_ns):
            return _unchanged(parent, job, started)

    reporter = Reporter(progress, progress_phase)
    reporter.total(len(small) + len(large), sum(e.size for e in small) + sum(e.size for e in large))
    if small or large:
        await job.discover(need_chunks=bool(large))
        await run_all(
            [job.pack(batch, chunks_of, versions, reporter) for batch in _batches(small)]
            + [job.chunked(entry, chunks_of, versions, reporter) for entry in large]
        )
    entries = _entries(scanned, chunks_of, versions, links)
    rows = _index_rows(scanned, chunks_of, versions, set(job.unstable))
    if (
        parent is not None
        and entries == parent.entries
        and root == (parent.root_mode, parent.root_mtime_ns)
    ):
        # Re-read (recently modified) but identical: the parent still describes the tree.
        await loop.run_in_executor(executor(), index.save, parent.id, parent_bytes, rows)
        return _unchanged(parent, job, started)
    blobs: dict[str, Blob] = {}
    for entry in entries:
        for cid in entry.chunks:
            if cid and cid not in blobs:
                blobs[cid] = job.added.get(cid) or job.orphans.get(cid) or known[cid]
    manifest_bytes, info = await _commit(store, bucket, prefix, kind, entries, blobs, root)

    await loop.run_in_executor(executor(), index.save, info.id, manifest_bytes, rows)
    reporter.emit(force=True)
    if job.skipped or job.unstable:
        log.warning(
            "prefix=%s snapshot %s: %d entries not saved (%s), %d files still changing while "
            "read, their last complete read saved (%s)",
            prefix,
            info.id,
            len(job.skipped),
            "; ".join(job.skipped[:5]) + (" ..." if len(job.skipped) > 5 else ""),
            len(job.unstable),
            ", ".join(job.unstable[:5]) + (" ..." if len(job.unstable) > 5 else ""),
        )
    return _result(info, job, started, unchanged=False)


def _unchanged(parent: mf.Manifest, job: Uploads, started: float) -> PushResult:
    return _result(parent.info(), job, started, unchanged=True)


def _result(info: SnapshotInfo, job: Uploads, started: float, *, unchanged: bool) -> PushResult:
    return PushResult(
        snapshot=info,
        unchanged=unchanged,
        files=info.files,
        logical_bytes=info.logical_bytes,
        read_files=job.read_files,
        read_bytes=job.read_bytes,
        uploaded_objects=job.uploaded_objects,
        uploaded_bytes=job.uploaded_bytes,
        reused_objects=0 if unchanged else job.reused_objects,
        skipped_special=len(job.skipped),
        seconds=time.monotonic() - started,
        skipped=list(job.skipped),
        unstable=list(job.unstable),
    )


def _index_rows(
    scanned: list[Scanned],
    chunks_of: dict[str, tuple[str, ...]],
    versions: dict[str, Version],
    unstable: set[str],
) -> dict[str, tuple[int, int, int, int, list[str]]]:
    """Index rows: a file read now is recorded with the version read (never one that kept
    changing, so it is read again next time); a file not read, with what the scan saw."""
    now_ns = time.time_ns()
    rows: dict[str, tuple[int, int, int, int, list[str]]] = {}
    for entry in scanned:
        if entry.kind != "f" or entry.path not in chunks_of or entry.path in unstable:
            continue
        version = versions.get(entry.path)
        if version is not None:
            size, mtime_ns, ctime_ns, ino, _mode = version
            seen = Scanned(entry.path, "f", entry.mode, mtime_ns, size, ino, ctime_ns)
        else:
            seen = entry
        row = index_row(seen, list(chunks_of[entry.path]), now_ns)
        if row is not None:
            rows[entry.path] = row
    return rows


async def _commit(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    kind: mf.Kind,
    entries: list[mf.Entry],
    blobs: dict[str, Blob],
    root: tuple[int, int],
) -> tuple[bytes, SnapshotInfo]:
    loop = asyncio.get_running_loop()
    for _attempt in range(3):
        manifest = mf.Manifest(
            id=mf.new_snapshot_id(),
            created_at=time.time(),
            kind=kind,
            entries=entries,
            blobs=blobs,
            root_mode=root[0],
            root_mtime_ns=root[1],
        )
        data = await loop.run_in_executor(executor(), mf.encode, manifest)
        info = manifest.info()
        try:
            await store.put_bytes(
                bucket,
                prefix + SNAPSHOTS + manifest.id,
                data,
                metadata=mf.info_metadata(info),
                if_none_match=True,
            )
        except AlreadyExists:  # a random-suffix collision: draw another id
            continue
        return data, info
    raise AlreadyExists("could not find a free snapshot id in 3 attempts")


def _entries(
    scanned: list[Scanned],
    chunks_of: dict[str, tuple[str, ...]],
    versions: dict[str, Version],
    links: dict[str, str],
) -> list[mf.Entry]:
    """The manifest's entries: a file read now as it was read (size is the bytes read), a file
    not read as the scan saw it, a further hard link as its first path's content."""
    entries: list[mf.Entry] = []
    for e in scanned:
        if e.kind == "f":
            first = links.get(e.path, "")
            chunks = chunks_of.get(first or e.path)
            if chunks is None:  # vanished, replaced or skipped while we read
                continue
            version = versions.get(first or e.path)
            if version is not None:
                size, mtime_ns, _ctime_ns, _ino, mode = version
            else:
                size, mtime_ns, mode = e.size, e.mtime_ns, e.mode
            entries.append(mf.Entry(e.path, "f", mode, mtime_ns, size, "", chunks, link=first))
        elif e.kind == "d":
            entries.append(mf.Entry(e.path, "d", e.mode, e.mtime_ns))
        else:
            entries.append(mf.Entry(e.path, "l", e.mode, e.mtime_ns, 0, e.target))
    return entries


def _batches(files: list[Scanned]) -> list[list[Scanned]]:
    batches: list[list[Scanned]] = []
    current: list[Scanned] = []
    size = 0
    for entry in files:
        current.append(entry)
        size += entry.size
        if size >= PACK_RAW_TARGET or len(current) >= MAX_PACK_FILES:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches
