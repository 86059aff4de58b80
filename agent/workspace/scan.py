"""Walking a workspace without following links, and the local index that spares re-reading it.

:func:`scan` lists directories, regular files and symlinks by directory descriptors
(:class:`agent.userfs.DirFds`: every directory opened ``O_NOFOLLOW`` relative to its parent,
entries stat'ed with ``fstatat(AT_SYMLINK_NOFOLLOW)``), so a directory the user swaps for a link
mid-walk is never entered and a link to ``/etc/shadow`` is recorded as a link, its target never
opened. FIFOs, sockets and devices are skipped and named in :attr:`ScanResult.skipped`.

:class:`LocalIndex` maps a path to ``(size, mtime_ns, inode, ctime_ns)`` and the content ids
it had; a file whose four stat values all match is not read again. Entries whose mtime is within
:data:`RACY_NS` of the push are not recorded, so a write landing in the same timestamp tick as
the hash is caught next time (git's "racy clean" rule).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field

import msgspec

from agent.userfs import DirFds, Skipped, open_root
from agent.workspace.manifest import utf8

log = logging.getLogger(__name__)

RACY_NS = 2_000_000_000


@dataclass(slots=True)
class Scanned:
    path: str
    kind: str  # "f", "d" or "l"
    mode: int
    mtime_ns: int
    size: int
    ino: int
    ctime_ns: int
    target: str = ""
    dev: int = 0
    nlink: int = 1


@dataclass(slots=True)
class ScanResult:
    entries: list[Scanned]
    #: ``"path: why"`` for every entry not saved (special files, directories that could not
    #: be entered).
    skipped: list[str] = field(default_factory=list)
    #: The directory's own mode, mtime, owner and group.
    root_mode: int = 0o755
    root_mtime_ns: int = 0
    root_uid: int = 0
    root_gid: int = 0


def scan(directory: str) -> ScanResult:
    """Every entry below ``directory`` (relative ``/`` paths, sorted, so parents come before
    children), what was skipped and why, and the directory's own attributes."""
    root_fd = open_root(directory)
    try:
        root = os.fstat(root_fd)
        result = ScanResult(
            [],
            root_mode=stat.S_IMODE(root.st_mode),
            root_mtime_ns=root.st_mtime_ns,
            root_uid=root.st_uid,
            root_gid=root.st_gid,
        )
        with DirFds(root_fd) as dirs:
            _walk(dirs, directory, result)
    finally:
        os.close(root_fd)
    result.entries.sort(key=lambda entry: entry.path)
    return result


def _walk(dirs: DirFds, directory: str, result: ScanResult) -> None:
    found = result.entries
    skipped = result.skipped
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            fd = dirs.dir_fd(rel)
        except Skipped as exc:
            skipped.append(f"{rel}: {exc}")
            continue
        prefix = rel + "/" if rel else ""
        # Nothing in this loop opens another directory: DirEntry.stat and readlink use ``fd``
        # itself, which the LRU of DirFds could otherwise close under them.
        try:
            with os.scandir(fd) as iterator:
                for item in iterator:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    path = prefix + item.name
                    fmt = stat.S_IFMT(st.st_mode)
                    if fmt == stat.S_IFREG:
                        found.append(
                            Scanned(
                                path,
                                "f",
                                stat.S_IMODE(st.st_mode),
                                st.st_mtime_ns,
                                st.st_size,
                                st.st_ino,
                                st.st_ctime_ns,
                                "",
                                st.st_dev,
                                st.st_nlink,
                            )
                        )
                    elif fmt == stat.S_IFDIR:
                        mode = stat.S_IMODE(st.st_mode)
                        found.append(Scanned(path, "d", mode, st.st_mtime_ns, 0, st.st_ino, 0))
                        stack.append(path)
                    elif fmt == stat.S_IFLNK:
                        try:
                            target = os.readlink(item.name, dir_fd=fd)
                        except OSError:  # replaced by something else: seen by the next scan
                            continue
                        mode = stat.S_IMODE(st.st_mode)
                        found.append(
                            Scanned(path, "l", mode, st.st_mtime_ns, 0, st.st_ino, 0, target)
                        )
                    else:
                        skipped.append(f"{path}: {stat.filemode(st.st_mode)[0]} special file")
                        log.warning(
                            "workspace=%s skipping special file %s (fifo, socket or device): "
                            "it is not saved in snapshots",
                            directory,
                            path,
                        )
        except OSError as exc:
            skipped.append(f"{rel}: cannot be listed: {exc.strerror}")


class _IndexFile(msgspec.Struct):
    snapshot: str
    files: dict[str, tuple[int, int, int, int, list[str]]]


_decoder = msgspec.msgpack.Decoder(_IndexFile)
_encoder = msgspec.msgpack.Encoder()


class LocalIndex:
    """The index of one (bucket, prefix) in ``index_dir``, plus a copy of the manifest it was
    built against (so a push whose parent is that snapshot need not download it)."""

    def __init__(self, index_dir: str, bucket: str, prefix: str) -> None:
        name = hashlib.sha256(f"{bucket}\0{prefix}".encode()).hexdigest()[:32]
        self.dir = index_dir
        self.path = os.path.join(index_dir, name + ".index")
        self.manifest_path = os.path.join(index_dir, name + ".manifest")
        self.snapshot = ""
        self.files: dict[str, tuple[int, int, int, int, list[str]]] = {}

    def load(self) -> None:
        try:
            with open(self.path, "rb") as source:
                data = _decoder.decode(source.read())
        except (OSError, msgspec.DecodeError):
            return
        self.snapshot, self.files = data.snapshot, data.files

    def cached_manifest(self, snapshot: str) -> bytes | None:
        if not snapshot or snapshot != self.snapshot:
            return None
        try:
            with open(self.manifest_path, "rb") as source:
                return source.read()
        except OSError:
            return None

    def lookup(self, entry: Scanned) -> list[str] | None:
        known = self.files.get(entry.path)
        if known is None:
            return None
        size, mtime_ns, ino, ctime_ns, chunks = known
        if (size, mtime_ns, ino, ctime_ns) != (
            entry.size,
            entry.mtime_ns,
            entry.ino,
            entry.ctime_ns,
        ):
            return None
        return chunks

    def save(
        self,
        snapshot: str,
        manifest_bytes: bytes,
        files: dict[str, tuple[int, int, int, int, list[str]]],
    ) -> None:
        """Replace the index atomically (write, fsync-less rename: losing it costs a re-read)."""
        os.makedirs(self.dir, exist_ok=True)
        # The index is a cache: a name msgpack cannot hold (not UTF-8) is simply re-read.
        storable = {p: row for p, row in files.items() if utf8(p)}
        for path, data in (
            (self.manifest_path, manifest_bytes),
            (self.path, _encoder.encode(_IndexFile(snapshot, storable))),
        ):
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        self.snapshot, self.files = snapshot, files


def index_row(
    entry: Scanned, chunks: list[str], now_ns: int
) -> tuple[int, int, int, int, list[str]] | None:
    """What the index records for ``entry`` (``None`` when its mtime is too recent to trust)."""
    if now_ns - entry.mtime_ns < RACY_NS:
        return None
    return (entry.size, entry.mtime_ns, entry.ino, entry.ctime_ns, chunks)
