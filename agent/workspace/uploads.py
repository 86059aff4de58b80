"""The objects one push writes: packs of small files and chunks of large ones, what an
interrupted push left behind, and the reads behind them (:mod:`agent.workspace.packer`,
:mod:`agent.userfs`). Used by :func:`agent.workspace.engine.push`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Any

import msgspec

from agent import userfs
from agent.objectstore import ObjectStore
from agent.workspace import manifest as mf
from agent.workspace.manifest import CHUNK_SIZE, CHUNKS, IDX_SUFFIX, PACKS, Blob
from agent.workspace.packer import (
    ChunkRead,
    Version,
    build_pack,
    open_large,
    read_chunk,
    version_of,
)
from agent.workspace.progress import Reporter
from agent.workspace.scan import Scanned
from agent.workspace.workers import cpu_slots, executor, run_all

log = logging.getLogger(__name__)


class Uploads:
    """The objects one push writes, and what it found already stored."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        prefix: str,
        directory: str,
        known: dict[str, Blob],
        concurrency: int,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.store, self.bucket, self.prefix, self.directory = store, bucket, prefix, directory
        self.known = known
        self.owner = owner
        self.skipped: list[str] = []
        self.unstable: list[str] = []
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
        versions: dict[str, Version],
        reporter: Reporter,
    ) -> None:
        loop = asyncio.get_running_loop()
        key = PACKS + secrets.token_hex(16)
        stored = _Either(self.known, self.orphans)
        async with self.cpu:
            build = await loop.run_in_executor(
                executor(), build_pack, self.directory, batch, stored, key, self.owner
            )
        for entry, cid, version in zip(batch, build.cids, build.versions, strict=True):
            if cid is not None and version is not None:
                chunks_of[entry.path] = (cid,)
                versions[entry.path] = version
        self.skipped.extend(build.skipped)
        self.unstable.extend(build.unstable)
        self.read_files += len(batch)
        self.read_bytes += build.bytes_read
        if build.blobs:
            await self._put(key, build.payload)
            await self._put(key + IDX_SUFFIX, mf.encode_idx(build.idx()))
            self.added.update(build.blobs)
        reporter.add(len(batch), build.bytes_read)

    async def chunked(
        self,
        entry: Scanned,
        chunks_of: dict[str, tuple[str, ...]],
        versions: dict[str, Version],
        reporter: Reporter,
    ) -> None:
        """A large file, chunk by chunk in parallel from one descriptor. When its size, mtime or
        ctime moved during the read it is read again (:data:`agent.userfs.READ_RETRIES`
        times); the last complete read is kept either way, as long as the bytes actually read
        (a chunk the shrunk file no longer reached is short, and later ones are dropped)."""
        loop = asyncio.get_running_loop()
        try:
            fd, before = await loop.run_in_executor(
                executor(), open_large, self.directory, entry, self.owner
            )
        except userfs.Skipped as exc:
            self.skipped.append(str(exc))
            return
        try:
            attempts = 0
            while True:
                attempts += 1
                cids, size = await self._read_chunks(fd, before.st_size, reporter)
                after = await loop.run_in_executor(executor(), os.fstat, fd)
                stable = userfs.same_version(before, after) and size == after.st_size
                if stable or attempts > userfs.READ_RETRIES:
                    break
                before = after
        finally:
            os.close(fd)
        if not stable:
            self.unstable.append(entry.path)
        chunks_of[entry.path] = tuple(cids)
        versions[entry.path] = version_of(after, size)
        self.read_files += 1
        reporter.add(1, 0)

    async def _read_chunks(self, fd: int, size: int, reporter: Reporter) -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        count = -(-size // CHUNK_SIZE)
        reads: list[ChunkRead | None] = [None] * count
        # Only chunks a snapshot references are skipped unread: one an interrupted push left
        # behind is compressed again, so it is reused only if it has exactly the stored size
        # (a store may keep a truncated object from a killed PUT).
        stored = self.known

        async def one(index: int) -> None:
            async with self.chunk_slots:
                read = await loop.run_in_executor(
                    executor(), read_chunk, fd, index, CHUNK_SIZE, size, stored
                )
                reads[index] = read
                cid = read.cid
                if cid:
                    self.read_bytes += read.raw
                if read.stored is None:
                    pass  # a hole, or a snapshot already references it
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
        cids: list[str] = []
        total = 0
        for index, read in enumerate(reads):
            assert read is not None
            if read.raw == 0:
                break  # the file ended before this chunk
            cids.append(read.cid)
            total += read.raw
            if read.raw < min(CHUNK_SIZE, size - index * CHUNK_SIZE):
                break  # it ended inside this one
        return cids, total


class _Either:
    """``in`` over two mappings without merging them (they can be large)."""

    def __init__(self, first: dict[str, Any], second: dict[str, Any]) -> None:
        self.first, self.second = first, second

    def __contains__(self, key: object) -> bool:
        return key in self.first or key in self.second
