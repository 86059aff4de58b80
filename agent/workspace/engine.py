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
import secrets
import time
from collections.abc import Awaitable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import zstandard

from agent.objectstore import AlreadyExists, ObjectStore
from agent.workspace import manifest as mf
from agent.workspace.manifest import CHUNK_SIZE, CHUNKS, IDX_SUFFIX, PACKS, SNAPSHOTS, Blob
from agent.workspace.packer import build_pack, read_chunk
from agent.workspace.progress import ProgressCallback, Reporter
from agent.workspace.scan import LocalIndex, Scanned, index_row, scan
from common.wire import SnapshotInfo

log = logging.getLogger(__name__)


class CorruptManifest(Exception):
    """A manifest object that does not decode: on stores where a killed PUT can leave a
    truncated object behind, it is not a snapshot, and the one before it is the newest."""


#: Small files are packed in batches of about this many raw bytes (packs end up 1/3 to 1/1 of
#: it after compression).
PACK_RAW_TARGET = 48 * 1024 * 1024
MAX_PACK_FILES = 10_000

_pool: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The worker threads for hashing, compression and file I/O, sized to the CPUs."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(
            max_workers=max(2, (os.cpu_count() or 2) + 2), thread_name_prefix="snapshot"
        )
    return _pool


def cpu_slots() -> int:
    return max(1, os.cpu_count() or 1)


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
    skipped_special: int
    seconds: float
    #: Snapshot ids retention kept (filled in by the caller that applied retention).
    kept: list[str] = field(default_factory=list)

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
) -> tuple[str | None, mf.Manifest | None, bytes]:
    """The newest snapshot whose manifest decodes, skipping (and naming) any that do not."""
    for snapshot_id in reversed(
        ids if ids is not None else await snapshot_ids(store, bucket, prefix)
    ):
        try:
            manifest, data = await load_manifest(store, bucket, prefix, snapshot_id)
        except CorruptManifest as exc:
            log.warning("prefix=%s %s; using the snapshot before it", prefix, exc)
            continue
        return snapshot_id, manifest, data
    return None, None, b""


async def run_all(jobs: Iterable[Awaitable[None]]) -> None:
    """Run ``jobs`` together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _scan_with_index(directory: str, index: LocalIndex) -> tuple[list[Scanned], int]:
    index.load()
    return scan(directory)


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
    scanned, skipped = await scanning
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
            parent_id, parent, parent_bytes = await newest_readable(
                store, bucket, prefix, [i for i in ids if i < parent_id]
            )
    known: dict[str, Blob] = dict(parent.blobs) if parent is not None else {}

    chunks_of: dict[str, tuple[str, ...]] = {}
    sizes: dict[str, int] = {}
    small: list[Scanned] = []
    large: list[Scanned] = []
    for entry in scanned:
        if entry.kind != "f":
            continue
        if entry.size == 0:
            chunks_of[entry.path] = ()
            continue
        hit = index.lookup(entry)
        if hit is not None and all(cid in known for cid in hit):
            chunks_of[entry.path] = tuple(hit)
        elif entry.size <= CHUNK_SIZE:
            small.append(entry)
        else:
            large.append(entry)

    job = _Uploads(store, bucket, prefix, directory, known, concurrency)
    if parent is not None and not small and not large:
        entries = _entries(scanned, chunks_of, sizes)
        if entries == parent.entries:
            return _unchanged(parent, job, skipped, started)

    reporter = Reporter(progress, progress_phase)
    reporter.total(len(small) + len(large), sum(e.size for e in small) + sum(e.size for e in large))
    if small or large:
        await job.discover(need_chunks=bool(large))
        await run_all(
            [job.pack(batch, chunks_of, sizes, reporter) for batch in _batches(small)]
            + [job.chunked(entry, chunks_of, reporter) for entry in large]
        )
    entries = _entries(scanned, chunks_of, sizes)
    rows = _index_rows(scanned, chunks_of, sizes)
    if parent is not None and entries == parent.entries:
        # Re-read (recently modified) but identical: the parent still describes the tree.
        await loop.run_in_executor(executor(), index.save, parent.id, parent_bytes, rows)
        return _unchanged(parent, job, skipped, started)
    blobs: dict[str, Blob] = {}
    for entry in entries:
        for cid in entry.chunks:
            if cid not in blobs:
                blobs[cid] = job.added.get(cid) or job.orphans.get(cid) or known[cid]
    manifest_bytes, info = await _commit(store, bucket, prefix, kind, entries, blobs)

    await loop.run_in_executor(executor(), index.save, info.id, manifest_bytes, rows)
    reporter.emit(force=True)
    return _result(info, job, skipped, started, unchanged=False)


def _unchanged(parent: mf.Manifest, job: _Uploads, skipped: int, started: float) -> PushResult:
    return _result(parent.info(), job, skipped, started, unchanged=True)


def _result(
    info: SnapshotInfo, job: _Uploads, skipped: int, started: float, *, unchanged: bool
) -> PushResult:
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
        skipped_special=skipped,
        seconds=time.monotonic() - started,
    )


def _index_rows(
    scanned: list[Scanned], chunks_of: dict[str, tuple[str, ...]], sizes: dict[str, int]
) -> dict[str, tuple[int, int, int, int, list[str]]]:
    now_ns = time.time_ns()
    rows: dict[str, tuple[int, int, int, int, list[str]]] = {}
    for entry in scanned:
        if entry.kind == "f" and entry.path in chunks_of:
            if sizes.get(entry.path, entry.size) != entry.size:
                continue
            row = index_row(entry, list(chunks_of[entry.path]), now_ns)
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
) -> tuple[bytes, SnapshotInfo]:
    loop = asyncio.get_running_loop()
    for _attempt in range(3):
        manifest = mf.Manifest(
            id=mf.new_snapshot_id(), created_at=time.time(), kind=kind, entries=entries, blobs=blobs
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
    scanned: list[Scanned], chunks_of: dict[str, tuple[str, ...]], sizes: dict[str, int]
) -> list[mf.Entry]:
    entries: list[mf.Entry] = []
    for e in scanned:
        if e.kind == "f":
            chunks = chunks_of.get(e.path)
            if chunks is None:  # vanished while we read
                continue
            entries.append(
                mf.Entry(e.path, "f", e.mode, e.mtime_ns, sizes.get(e.path, e.size), "", chunks)
            )
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


class _Uploads:
    """The objects one push writes, and what it found already stored."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        prefix: str,
        directory: str,
        known: dict[str, Blob],
        concurrency: int,
    ) -> None:
        self.store, self.bucket, self.prefix, self.directory = store, bucket, prefix, directory
        self.known = known
        self.added: dict[str, Blob] = {}
        self.orphans: dict[str, Blob] = {}
        self.listed_chunks: dict[str, int] = {}
        self.uploads = asyncio.Semaphore(max(1, concurrency))
        self.chunk_slots = asyncio.Semaphore(max(1, concurrency))
        self.cpu = asyncio.Semaphore(cpu_slots())
        self.read_files = self.read_bytes = 0
        self.uploaded_objects = self.uploaded_bytes = self.reused_objects = 0

    async def _put(self, key: str, data: bytes) -> None:
        async with self.uploads:
            await self.store.put_bytes(self.bucket, self.prefix + key, data)
        self.uploaded_objects += 1
        self.uploaded_bytes += len(data)

    async def discover(self, need_chunks: bool) -> None:
        """Find packs (via their ``.idx``) and chunks an interrupted push already stored."""
        base = self.prefix + PACKS
        sizes = {
            info.key[len(self.prefix) :]: info.size
            for info in await self.store.list(self.bucket, base)
        }
        listed = set(sizes)
        referenced = {blob.key for blob in self.known.values()}
        orphan_idx = [
            key
            for key in listed
            if key.endswith(IDX_SUFFIX)
            and key[: -len(IDX_SUFFIX)] in listed
            and key[: -len(IDX_SUFFIX)] not in referenced
        ]
        limit = asyncio.Semaphore(16)

        async def read_idx(key: str) -> None:
            async with limit:
                data = await self.store.get_bytes(self.bucket, self.prefix + key)
            pack = key[: -len(IDX_SUFFIX)]
            try:
                items = mf.decode_idx(data)
            except (msgspec.DecodeError, ValueError) as exc:
                log.warning("prefix=%s ignoring unreadable %s: %s", self.prefix, key, exc)
                return
            if any(offset + length > sizes[pack] for _, offset, length, _, _ in items):
                log.warning("prefix=%s ignoring %s: it points past its pack", self.prefix, key)
                return
            for cid, offset, length, raw, zstd in items:
                self.orphans.setdefault(cid, Blob(pack, offset, length, raw, zstd))
            self.reused_objects += 1

        await run_all(read_idx(key) for key in orphan_idx)
        if need_chunks:
            base = self.prefix + CHUNKS
            for info in await self.store.list(self.bucket, base):
                self.listed_chunks[info.key[len(base) :]] = info.size

    async def pack(
        self,
        batch: list[Scanned],
        chunks_of: dict[str, tuple[str, ...]],
        sizes: dict[str, int],
        reporter: Reporter,
    ) -> None:
        loop = asyncio.get_running_loop()
        key = PACKS + secrets.token_hex(16)
        stored = _Either(self.known, self.orphans)
        async with self.cpu:
            build = await loop.run_in_executor(
                executor(), build_pack, self.directory, batch, stored, key
            )
        for entry, cid, size in zip(batch, build.cids, build.sizes, strict=True):
            if cid is not None:
                chunks_of[entry.path] = (cid,)
                sizes[entry.path] = size
        self.read_files += len(batch)
        self.read_bytes += build.bytes_read
        if build.blobs:
            await self._put(key, build.payload)
            await self._put(key + IDX_SUFFIX, mf.encode_idx(build.idx()))
            self.added.update(build.blobs)
        reporter.add(len(batch), build.bytes_read)

    async def chunked(
        self, entry: Scanned, chunks_of: dict[str, tuple[str, ...]], reporter: Reporter
    ) -> None:
        loop = asyncio.get_running_loop()
        path = os.path.join(self.directory, entry.path)
        count = -(-entry.size // CHUNK_SIZE)
        cids: list[str] = [""] * count
        # Only chunks a snapshot references are skipped unread: one an interrupted push left
        # behind is compressed again, so it is reused only if it has exactly the stored size
        # (a store may keep a truncated object from a killed PUT).
        stored = self.known

        async def one(index: int) -> None:
            async with self.chunk_slots:
                try:
                    read = await loop.run_in_executor(
                        executor(), read_chunk, path, index, CHUNK_SIZE, stored
                    )
                except FileNotFoundError:
                    return
                cids[index] = read.cid
                self.read_bytes += read.raw
                cid = read.cid
                if read.stored is None:
                    pass  # a snapshot already references it
                elif cid in self.added:
                    pass  # another file of this push has the same chunk
                elif self.listed_chunks.get(cid) == len(read.stored):
                    self.added[cid] = Blob(CHUNKS + cid, 0, len(read.stored), read.raw, read.zstd)
                    self.reused_objects += 1
                else:
                    self.added[cid] = Blob(CHUNKS + cid, 0, len(read.stored), read.raw, read.zstd)
                    await self._put(CHUNKS + cid, read.stored)
            reporter.add(0, read.raw)

        await run_all(one(i) for i in range(count))
        if all(cids):
            chunks_of[entry.path] = tuple(cids)
        self.read_files += 1
        reporter.add(1, 0)


class _Either:
    """``in`` over two mappings without merging them (they can be large)."""

    def __init__(self, first: dict[str, Any], second: dict[str, Any]) -> None:
        self.first, self.second = first, second

    def __contains__(self, key: object) -> bool:
        return key in self.first or key in self.second
