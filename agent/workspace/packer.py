"""The CPU side of a push, run in worker threads: read, hash (BLAKE3), compress (zstd).

Both libraries release the GIL, so a pool of threads keeps every core busy while the event loop
uploads. Work is handed over a whole pack or chunk at a time, never per file, to keep Python's
per-file overhead to a read, a hash and a dict lookup.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Container
from dataclasses import dataclass, field

import blake3
import zstandard

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


@dataclass
class PackBuild:
    """One pack's worth of small files. ``cids[i]``/``sizes[i]`` belong to ``files[i]``
    (``None`` for a file that vanished since the scan)."""

    files: list[Scanned]
    cids: list[str | None] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    payload: bytes = b""
    blobs: dict[str, Blob] = field(default_factory=dict)
    bytes_read: int = 0

    def idx(self) -> list[tuple[str, int, int, int, bool]]:
        return [(cid, b.offset, b.length, b.raw, b.zstd) for cid, b in self.blobs.items()]


def build_pack(root: str, files: list[Scanned], known: Container[str], key: str) -> PackBuild:
    """Read, hash and compress ``files`` into one pack payload stored at ``key``; contents in
    ``known`` (already stored) or repeated within the batch are stored once."""
    build = PackBuild(files)
    parts: list[bytes] = []
    offset = 0
    for entry in files:
        try:
            with open(os.path.join(root, entry.path), "rb") as source:
                data = source.read()
        except FileNotFoundError:
            build.cids.append(None)
            build.sizes.append(0)
            continue
        build.bytes_read += len(data)
        cid = content_id(data)
        build.cids.append(cid)
        build.sizes.append(len(data))
        if cid in known or cid in build.blobs:
            continue
        stored, zstd = compress(data)
        build.blobs[cid] = Blob(key, offset, len(stored), len(data), zstd)
        parts.append(stored)
        offset += len(stored)
    build.payload = b"".join(parts)
    return build


@dataclass
class ChunkRead:
    cid: str
    raw: int
    stored: bytes | None  # None: already stored, nothing to upload
    zstd: bool


def read_chunk(path: str, index: int, chunk_size: int, known: Container[str]) -> ChunkRead:
    """Chunk ``index`` of the file at ``path``, compressed unless ``known`` has its id."""
    with open(path, "rb") as source:
        data = os.pread(source.fileno(), chunk_size, index * chunk_size)
    cid = content_id(data)
    if cid in known:
        return ChunkRead(cid, len(data), None, False)
    stored, zstd = compress(data)
    return ChunkRead(cid, len(data), stored, zstd)
