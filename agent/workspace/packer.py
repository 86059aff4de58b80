"""The CPU side of a push, run in worker threads: read, hash (BLAKE3), compress (zstd).

Both libraries release the GIL, so a pool of threads keeps every core busy while the event loop
uploads. Work is handed over a whole pack or chunk at a time, never per file, to keep Python's
per-file overhead to a read, a hash and a dict lookup.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Container
from dataclasses import dataclass, field

import blake3
import zstandard

from agent import userfs
from agent.workspace.manifest import Blob
from agent.workspace.scan import Scanned

LEVEL = 3
#: Below this, compression overhead outweighs any gain.
MIN_COMPRESS = 64
#: Larger blobs are compressed only if a sample of this size shrinks by at least 10 %
#: (already-compressed data: wheels, images, model weights).
SAMPLE = 64 * 1024

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=LEVEL)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def content_id(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def compress(data: bytes) -> tuple[bytes, bool]:
    """``(stored bytes, compressed?)``: compressed only when strictly smaller."""
    if len(data) < MIN_COMPRESS:
        return data, False
    cctx = _compressor()
    if len(data) > 2 * SAMPLE:
        sample = data[:SAMPLE]
        if len(cctx.compress(sample)) > 0.9 * SAMPLE:
            return data, False
    packed = cctx.compress(data)
    if len(packed) < len(data):
        return packed, True
    return data, False


def unpack(stored: bytes | memoryview, blob: Blob, cid: str) -> bytes:
    """The raw content of ``blob``, verified against its content id."""
    if blob.zstd:
        data = _decompressor().decompress(stored, max_output_size=blob.raw)
    else:
        data = bytes(stored)
    if len(data) != blob.raw or content_id(data) != cid:
        raise CorruptContent(f"content {cid} in {blob.key} does not match its id")
    return data


class CorruptContent(Exception):
    pass


#: What a read found: ``(size, mtime_ns, ctime_ns, inode, mode)`` of the version read.
Version = tuple[int, int, int, int, int]


def version_of(st: os.stat_result, size: int | None = None) -> Version:
    return (
        st.st_size if size is None else size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        stat.S_IMODE(st.st_mode),
    )


@dataclass
class PackBuild:
    """One pack's worth of small files. ``cids[i]``/``versions[i]`` belong to ``files[i]``
    (``None`` for a file that was skipped: vanished, replaced, not a regular file)."""

    files: list[Scanned]
    cids: list[str | None] = field(default_factory=list)
    versions: list[Version | None] = field(default_factory=list)
    payload: bytes = b""
    blobs: dict[str, Blob] = field(default_factory=dict)
    bytes_read: int = 0
    #: ``"path: why"`` of files not read.
    skipped: list[str] = field(default_factory=list)
    #: Files still changing after every retry: their last complete read is stored.
    unstable: list[str] = field(default_factory=list)

    def idx(self) -> list[tuple[str, int, int, int, bool]]:
        return [(cid, b.offset, b.length, b.raw, b.zstd) for cid, b in self.blobs.items()]


def build_pack(
    root: str,
    files: list[Scanned],
    known: Container[str],
    key: str,
    owner: tuple[int, int] | None = None,
) -> PackBuild:
    """Read, hash and compress ``files`` into one pack payload stored at ``key``; contents in
    ``known`` (already stored) or repeated within the batch are stored once. Files are opened
    by :func:`agent.userfs.open_regular` (no link followed, the inode the scan saw) with the
    filesystem credentials of ``owner`` (uid, gid), and read by
    :func:`agent.userfs.read_stable`: what is stored is exactly the bytes read."""
    build = PackBuild(files)
    parts: list[bytes] = []
    offset = 0
    uid, gid = owner if owner is not None else (None, None)
    # The root is the agent's own host dir (its parents may be closed to the user): opened as
    # root, everything below it as the user.
    root_fd = userfs.open_root(root)
    with userfs.as_user(uid, gid):
        try:
            with userfs.DirFds(root_fd, owner=uid) as dirs:
                for entry in files:
                    try:
                        fd, st = userfs.open_regular(dirs, entry.path, (entry.dev, entry.ino))
                    except userfs.Skipped as exc:
                        build.cids.append(None)
                        build.versions.append(None)
                        build.skipped.append(str(exc))
                        continue
                    try:
                        read = userfs.read_stable(fd, st)
                    finally:
                        os.close(fd)
                    data = read.data
                    if not read.stable:
                        build.unstable.append(entry.path)
                    build.bytes_read += len(data)
                    cid = content_id(data)
                    build.cids.append(cid)
                    build.versions.append(version_of(read.st, len(data)))
                    if cid in known or cid in build.blobs:
                        continue
                    stored, zstd = compress(data)
                    build.blobs[cid] = Blob(key, offset, len(stored), len(data), zstd)
                    parts.append(stored)
                    offset += len(stored)
        finally:
            os.close(root_fd)
    build.payload = b"".join(parts)
    return build


@dataclass
class ChunkRead:
    cid: str  # "" for a hole: nothing read, nothing stored
    raw: int  # bytes of the file this chunk covers
    stored: bytes | None  # None: already stored (or a hole), nothing to upload
    zstd: bool


def open_large(
    root: str, entry: Scanned, owner: tuple[int, int] | None
) -> tuple[int, os.stat_result]:
    """Open a large file for :func:`read_chunk` the way :func:`build_pack` opens small ones.
    Raises :class:`agent.userfs.Skipped`."""
    uid, gid = owner if owner is not None else (None, None)
    root_fd = userfs.open_root(root)
    try:
        with userfs.as_user(uid, gid), userfs.DirFds(root_fd, owner=uid) as dirs:
            return userfs.open_regular(dirs, entry.path, (entry.dev, entry.ino))
    finally:
        os.close(root_fd)


def read_chunk(fd: int, index: int, chunk_size: int, size: int, known: Container[str]) -> ChunkRead:
    """Chunk ``index`` of the open file ``fd`` whose size was ``size`` when this read began,
    compressed unless ``known`` has its id. A chunk wholly in a hole of a sparse file is not
    read (``cid == ""``); one the file no longer reaches is short (its real length)."""
    offset = index * chunk_size
    length = max(0, min(chunk_size, size - offset))
    if length and offset + length <= os.lseek(fd, 0, os.SEEK_END):
        if userfs.is_hole(fd, offset, length):
            return ChunkRead("", length, None, False)
    data = b""
    while len(data) < length:
        piece = os.pread(fd, length - len(data), offset + len(data))
        if not piece:
            break
        data += piece
    cid = content_id(data)
    if cid in known:
        return ChunkRead(cid, len(data), None, False)
    stored, zstd = compress(data)
    return ChunkRead(cid, len(data), stored, zstd)
