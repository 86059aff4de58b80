"""One data volume's pull or push between its bucket prefix and a host dir: the per-volume half
of :class:`agent.volumes.VolumeSync`, which owns the host-dir layout, the stores and the errors,
and whose docstring states the contracts kept here (which keys a pull refuses, which files a
push uploads and which objects it deletes; never through a symlink).

Objects stay plain objects: key = ``prefix/`` + relative path, readable and writable by any S3
tool. A pull writes the pull record (``<i>.pulled.json``: what it wrote, relative path → size,
mtime, etag) that the volume's next push compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from agent import userfs
from agent.objectstore import ObjectInfo
from agent.workspace.manifest import utf8
from agent.workspace.packer import open_large
from agent.workspace.progress import ProgressCallback
from agent.workspace.scan import Scanned, ScanResult, scan
from common import wire

log = logging.getLogger(__name__)


class VolumeStore(Protocol):
    """The part of :class:`agent.objectstore.ObjectStore` volumes use."""

    async def put_file(
        self, bucket: str, key: str, body: BinaryIO | None, metadata: dict[str, str]
    ) -> None: ...

    async def get_file(self, bucket: str, key: str, out: BinaryIO) -> dict[str, str]: ...

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]: ...

    async def delete(self, bucket: str, keys: list[str]) -> None: ...

    async def close(self) -> None: ...


def describe(volume: wire.Volume) -> str:
    """``container@alias[/prefix]:/mount/path`` as the user wrote it (without permission)."""
    source = f"{volume.container}@{volume.alias}"
    if volume.prefix:
        source += "/" + volume.prefix.strip("/")
    return f"{source}:{volume.mount_path}"


def key_prefix(volume: wire.Volume) -> str:
    """The prefix as a directory: ``""`` or ``"a/b/"``."""
    prefix = volume.prefix.strip("/")
    return prefix + "/" if prefix else ""


def safe_relative(rel: str) -> str | None:
    """``rel`` as a relative path inside the volume dir, or ``None`` when it could escape or
    is not a plain path (absolute, ``.``/``..``/empty segments, NUL, backslash tricks)."""
    if not rel or rel.startswith("/") or "\x00" in rel or "\\" in rel:
        return None
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return os.path.join(*parts)


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    etag: str


@dataclass
class VolumeTransfer:
    """One pull or one push of volume ``index`` of ``notebook`` through ``store``: at most
    ``concurrency`` objects at once, progress reported to ``progress`` stamped by ``clock``."""

    notebook: str
    index: int
    volume: wire.Volume
    store: VolumeStore
    concurrency: int
    clock: Callable[[], float]
    progress: ProgressCallback | None = None

    async def pull(self, staging: str, record: str) -> int:
        """Write every object under the volume's prefix into ``staging`` (made afresh) and what
        was written into the pull record ``record``."""
        volume = self.volume
        prefix = key_prefix(volume)
        objects = await self.store.list(volume.container, prefix)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        staging_fd = userfs.open_root(staging)
        # Every directory and file of the pull is made relative to descriptors, O_NOFOLLOW and
        # O_EXCL: nothing is written through a link or over an entry that is already there.
        dirs = userfs.DirFds(staging_fd)
        try:
            return await self._fetch_all(objects, prefix, dirs, record)
        finally:
            dirs.close()
            os.close(staging_fd)

    async def _fetch_all(
        self, objects: list[ObjectInfo], prefix: str, dirs: userfs.DirFds, record: str
    ) -> int:
        notebook, volume, store, progress = self.notebook, self.volume, self.store, self.progress
        wanted: list[tuple[ObjectInfo, str]] = []
        refused = 0
        for info in objects:
            rel_key = info.key[len(prefix) :]
            if rel_key.endswith("/"):  # a "directory marker" some tools write
                rel = safe_relative(rel_key.rstrip("/"))
                if rel is not None:
                    with contextlib.suppress(userfs.Skipped, OSError):
                        userfs.make_dirs(dirs, rel)
                continue
            rel = safe_relative(rel_key)
            if rel is None:
                refused += 1
                log.warning(
                    "notebook=%s volume %s: refusing key %r (it would leave the volume dir)",
                    notebook,
                    describe(volume),
                    info.key,
                )
                continue
            wanted.append((info, rel))
        total_bytes = sum(info.size for info, _ in wanted)
        done = _Counter(len(wanted), total_bytes)
        pulled: dict[str, _Entry] = {}

        def report() -> None:
            if progress is not None:
                progress(done.progress("volumes-pull", describe(volume), self.clock()))

        async def fetch(info: ObjectInfo, rel: str) -> None:
            parent, _ = userfs.split(rel)
            try:
                if parent:
                    userfs.make_dirs(dirs, parent)
                fd = userfs.create_file(dirs, rel)
            except (userfs.Skipped, FileExistsError, NotADirectoryError) as exc:
                log.warning(
                    "notebook=%s volume %s: key %r clashes with another key (%s); skipped",
                    notebook,
                    describe(volume),
                    info.key,
                    exc,
                )
                return
            with os.fdopen(fd, "wb") as out:
                await store.get_file(volume.container, info.key, out)
                out.flush()
                st = os.fstat(out.fileno())
            pulled[rel] = _Entry(st.st_size, st.st_mtime_ns, info.etag)
            done.add(info.size)
            report()

        report()
        await bounded(
            (lambda info=info, rel=rel: fetch(info, rel) for info, rel in wanted),
            self.concurrency,
        )
        _write_manifest(record, pulled)
        log.info(
            "notebook=%s volume %d (%s) pulled: %d files, %d bytes, %d keys refused",
            notebook,
            self.index,
            describe(volume),
            len(pulled),
            total_bytes,
            refused,
        )
        return done.bytes_done

    async def push(self, directory: str, record: str) -> int:
        """Upload what changed in ``directory`` since the pull ``record`` (``rw``, ``rwd``) and,
        for ``rwd``, delete the objects of the pulled files the user deleted."""
        notebook, volume, store, progress = self.notebook, self.volume, self.store, self.progress
        pulled = _read_manifest(record)
        tree = await asyncio.to_thread(_scan, directory)
        local = {e.path: e for e in tree.entries if e.kind == "f"}
        for skipped in tree.skipped:
            log.warning(
                "notebook=%s volume %s: not pushed: %s", notebook, describe(volume), skipped
            )
        # Read as the notebook's user (who owns the volume dir once its container ran).
        owner = (tree.root_uid, tree.root_gid) if tree.root_uid != 0 else None
        prefix = key_prefix(volume)
        uploads = [
            (rel, entry)
            for rel, entry in sorted(local.items())
            if (old := pulled.get(rel)) is None
            or (old.size, old.mtime_ns) != (entry.size, entry.mtime_ns)
        ]
        done = _Counter(len(uploads), sum(entry.size for _, entry in uploads))

        def report() -> None:
            if progress is not None:
                progress(done.progress("volumes-push", describe(volume), self.clock()))

        async def upload(rel: str, entry: Scanned) -> None:
            try:
                fd, before = await asyncio.to_thread(open_large, directory, entry, owner)
            except userfs.Skipped as exc:
                # Swapped for a link, a FIFO or another file since the scan: never read.
                log.warning(
                    "notebook=%s volume %s: not pushed: %s", notebook, describe(volume), exc
                )
                return
            key = prefix + rel.replace(os.sep, "/")
            with os.fdopen(fd, "rb") as body:
                for attempt in range(userfs.READ_RETRIES + 1):
                    await store.put_file(volume.container, key, body, {})
                    after = os.fstat(body.fileno())
                    if userfs.same_version(before, after):
                        break
                    before = after
                    if attempt == userfs.READ_RETRIES:
                        log.warning(
                            "notebook=%s volume %s: %s kept changing while uploaded; its last "
                            "upload stays",
                            notebook,
                            describe(volume),
                            rel,
                        )
            done.add(entry.size)
            report()

        report()
        await bounded(
            (lambda rel=rel, entry=entry: upload(rel, entry) for rel, entry in uploads),
            self.concurrency,
        )
        deleted = 0
        if volume.permission == "rwd":
            gone = {rel: e for rel, e in pulled.items() if rel not in local}
            if gone:
                remote = {o.key: o for o in await store.list(volume.container, prefix)}
                keys = []
                for rel, entry in sorted(gone.items()):
                    key = prefix + rel.replace(os.sep, "/")
                    current = remote.get(key)
                    if current is not None and (not entry.etag or current.etag == entry.etag):
                        keys.append(key)
                if keys:
                    await store.delete(volume.container, keys)
                deleted = len(keys)
        log.info(
            "notebook=%s volume %d (%s) pushed: %d files uploaded, %d objects deleted",
            notebook,
            self.index,
            describe(volume),
            len(uploads),
            deleted,
        )
        return done.bytes_done


# ---------------------------------------------------------------- helpers


class _Counter:
    def __init__(self, files: int, size: int) -> None:
        self.files_total = files
        self.bytes_total = size
        self.files_done = 0
        self.bytes_done = 0

    def add(self, size: int) -> None:
        self.files_done += 1
        self.bytes_done += size

    def progress(self, phase: str, detail: str, at: float) -> wire.Progress:
        return wire.Progress(
            phase=phase,  # type: ignore[arg-type]
            files_done=self.files_done,
            files_total=self.files_total,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            at=at,
            detail=detail,
        )


async def bounded(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run the jobs, at most ``limit`` at once; after all finished, raise the first error."""
    semaphore = asyncio.Semaphore(max(1, limit))

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await job()

    results = await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _scan(root: str) -> ScanResult:
    """Everything under ``root`` (never following a link, see :func:`agent.workspace.scan.scan`).

    A file name that is not UTF-8 cannot be an S3 key: the push fails naming it (and the host
    copy is kept) rather than skipping it, since the volume dir is removed after a push."""
    tree = scan(root)
    for entry in tree.entries:
        if entry.kind == "f" and not utf8(entry.path):
            raise ValueError(
                f"file name {os.fsencode(entry.path)!r} is not UTF-8, so it cannot be an S3 "
                "object key; rename it and stop the notebook again"
            )
    return tree


def _write_manifest(path: str, entries: dict[str, _Entry]) -> None:
    data = {rel: [e.size, e.mtime_ns, e.etag] for rel, e in entries.items()}
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        json.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _read_manifest(path: str) -> dict[str, _Entry]:
    """What was pulled; an absent record means nothing is known (so nothing is deleted)."""
    try:
        with open(path) as source:
            raw = json.load(source)
    except FileNotFoundError:
        return {}
    return {rel: _Entry(int(v[0]), int(v[1]), str(v[2])) for rel, v in raw.items()}


#: The pull record's entry and its reading and writing, for datasync (:mod:`agent.datasync`),
#: which keeps the same record up to date while the notebook runs.
RecordEntry = _Entry
read_record = _read_manifest
write_record = _write_manifest
