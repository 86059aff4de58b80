"""The snapshot manifest: what a workspace held and where each piece of content is stored.

Object layout under a workspace prefix (``<notebook>/workspace/``, design.md "Workspace
snapshots"):

* ``snapshots/<id>``: a :class:`Manifest`, msgpack then zstd, written last and conditionally.
  Its user metadata repeats the :class:`common.wire.SnapshotInfo` fields so a listing needs no
  manifest download.
* ``packs/<pack id>``: many small contents, each compressed on its own, back to back;
  ``packs/<pack id>.idx`` (msgpack list of ``(content id, offset, length, raw, zstd)``) is
  written after the pack, so a killed push can reuse what it finished.
* ``chunks/<content id>``: one fixed-size chunk (:data:`CHUNK_SIZE`) of a large file.

Content ids are BLAKE3 (hex) of the raw bytes. A stored blob is zstd-compressed only when that
made it strictly smaller, so an object shorter than its raw size is compressed and one of equal
size is raw (which is how a resumed push recognises a chunk it finds by listing).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Literal

import msgspec
import zstandard

from common.wire import SnapshotInfo

#: Large files are cut into chunks of this size; files up to this size are packed.
CHUNK_SIZE = 8 * 1024 * 1024
FORMAT = 1

SNAPSHOTS = "snapshots/"
PACKS = "packs/"
CHUNKS = "chunks/"
IDX_SUFFIX = ".idx"

Kind = Literal["checkpoint", "stop", "fork", "manual"]


class Blob(msgspec.Struct, array_like=True, frozen=True):
    """Where one content id lives: ``length`` bytes at ``offset`` of object ``key``."""

    key: str
    offset: int
    length: int
    raw: int
    zstd: bool


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One path. ``kind``: ``f`` file, ``d`` directory, ``l`` symlink (``target`` set)."""

    path: str
    kind: Literal["f", "d", "l"]
    mode: int
    mtime_ns: int
    size: int = 0
    target: str = ""
    chunks: tuple[str, ...] = ()
    #: Set in stored manifests when ``path``/``target`` hold the hex of their bytes: Linux names
    #: need not be UTF-8, and msgpack strings must be. In memory, paths are always the
    #: ``surrogateescape`` strings ``os`` functions take.
    raw: bool = False
    #: For a file: the path of an earlier file entry it is a hard link of (same inode when
    #: pushed); it then has that entry's chunks and is restored as a link to it.
    link: str = ""


class Manifest(msgspec.Struct):
    id: str
    created_at: float
    kind: Kind
    entries: list[Entry]
    blobs: dict[str, Blob]
    chunk_size: int = CHUNK_SIZE
    format: int = FORMAT
    #: The workspace directory's own mode and mtime (``-1``: not recorded, older manifests).
    root_mode: int = -1
    root_mtime_ns: int = -1

    def info(self) -> SnapshotInfo:
        files = logical = 0
        for entry in self.entries:
            if entry.kind == "f":
                files += 1
                logical += entry.size
        stored = sum(blob.length for blob in self.blobs.values())
        return SnapshotInfo(
            id=self.id,
            created_at=self.created_at,
            kind=self.kind,
            files=files,
            logical_bytes=logical,
            stored_bytes=stored,
        )


class UnsafePath(ValueError):
    """A manifest path that could write outside the restore directory."""


_encoder = msgspec.msgpack.Encoder()
_manifest_decoder = msgspec.msgpack.Decoder(Manifest)
_idx_decoder = msgspec.msgpack.Decoder(list[tuple[str, int, int, int, bool]])


def _to_hex(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").hex()


def _from_hex(text: str) -> str:
    return bytes.fromhex(text).decode("utf-8", "surrogateescape")


def utf8(name: str) -> bool:
    """Whether ``name`` is valid UTF-8 (``os`` gives undecodable bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _names_utf8(entry: Entry) -> bool:
    return utf8(entry.path) and utf8(entry.target) and utf8(entry.link)


def _portable(entry: Entry) -> Entry:
    if _names_utf8(entry):
        return entry
    return msgspec.structs.replace(
        entry,
        path=_to_hex(entry.path),
        target=_to_hex(entry.target),
        link=_to_hex(entry.link),
        raw=True,
    )


def _native(entry: Entry) -> Entry:
    if not entry.raw:
        return entry
    return msgspec.structs.replace(
        entry,
        path=_from_hex(entry.path),
        target=_from_hex(entry.target),
        link=_from_hex(entry.link),
        raw=False,
    )


def encode(manifest: Manifest) -> bytes:
    if not all(_names_utf8(e) for e in manifest.entries):
        manifest = msgspec.structs.replace(
            manifest, entries=[_portable(e) for e in manifest.entries]
        )
    return zstandard.ZstdCompressor(level=3).compress(_encoder.encode(manifest))


def decode(data: bytes) -> Manifest:
    manifest = _manifest_decoder.decode(zstandard.ZstdDecompressor().decompress(data))
    if any(e.raw for e in manifest.entries):
        manifest.entries = [_native(e) for e in manifest.entries]
    return manifest


def encode_idx(items: list[tuple[str, int, int, int, bool]]) -> bytes:
    return _encoder.encode(items)


def decode_idx(data: bytes) -> list[tuple[str, int, int, int, bool]]:
    return _idx_decoder.decode(data)


def new_snapshot_id(now: float | None = None) -> str:
    """``20261121T201500123Z-<random>``: ids sort by creation time."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(4)}"


def snapshot_time(snapshot_id: str) -> float:
    """Creation time encoded in a snapshot id (0.0 when it is not one of ours)."""
    try:
        moment = datetime.strptime(snapshot_id[:18], "%Y%m%dT%H%M%S%f")
    except ValueError:
        return 0.0
    return moment.replace(tzinfo=UTC).timestamp()


def info_metadata(info: SnapshotInfo) -> dict[str, str]:
    return {
        "kind": info.kind,
        "created-at": repr(info.created_at),
        "files": str(info.files),
        "logical-bytes": str(info.logical_bytes),
        "stored-bytes": str(info.stored_bytes),
    }


def info_from_metadata(snapshot_id: str, meta: dict[str, str]) -> SnapshotInfo | None:
    try:
        return SnapshotInfo(
            id=snapshot_id,
            created_at=float(meta["created-at"]),
            kind=meta["kind"],  # type: ignore[arg-type]
            files=int(meta["files"]),
            logical_bytes=int(meta["logical-bytes"]),
            stored_bytes=int(meta["stored-bytes"]),
        )
    except (KeyError, ValueError):
        return None


def check_paths(entries: list[Entry]) -> None:
    """Raise :class:`UnsafePath` naming the first path that is absolute, empty, has a ``.`` or
    ``..`` component, repeats, lies below a symlink of the manifest (writing it would follow
    the link out of the workspace), or is a hard link of anything but an earlier file."""
    links = {entry.path for entry in entries if entry.kind == "l"}
    seen: set[str] = set()
    files: set[str] = set()
    for entry in entries:
        path = entry.path
        if entry.link:
            # A hard link names a plain file restored before it (so it is inside the tree).
            if entry.kind != "f" or entry.link not in files:
                raise UnsafePath(
                    f"manifest path {path!r} is a hard link of {entry.link!r}, which is not an "
                    "earlier file of the manifest; refusing to restore"
                )
        elif entry.kind == "f":
            files.add(path)
        # A backslash is an ordinary filename character on Linux, not a separator: refusing it
        # would make a workspace holding such a file unrestorable.
        if not path or path.startswith("/") or "\x00" in path:
            raise UnsafePath(f"manifest path {path!r} is empty or absolute; refusing to restore")
        parts = path.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise UnsafePath(
                f"manifest path {path!r} has an empty, '.' or '..' component; refusing to restore"
            )
        if path in seen:
            raise UnsafePath(f"manifest path {path!r} appears twice; refusing to restore")
        seen.add(path)
        if links:
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent in links:
                    raise UnsafePath(
                        f"manifest path {path!r} would traverse the symlink {parent!r}; "
                        "refusing to restore"
                    )
