"""Data volumes: objects of a user's own bucket pulled into a host dir, bind mounted into the
notebook, and (``rw``, ``rwd``) pushed back after the container stopped (design.md, "Volumes").

Layout under ``volumes_dir/<notebook>/``: ``<i>`` is volume ``i``'s mount source, and
``<i>.pulled.json`` records what the pull wrote (relative path → size, mtime, etag), which is
how a push tells additions and changes from untouched files, and user deletions (``rwd``) from
files that were never there. A pull writes into ``<i>.pulling`` and renames it into place, so
an existing ``<i>`` is always a complete pull, possibly with the user's unpushed changes (it
survives a failed push): a start finding it uses it as is.

Objects stay plain objects: key = ``prefix/`` + relative path, readable and writable by any S3
tool. Contracts:

* :meth:`VolumeSync.pull` never follows or creates a symlink and refuses any key that would
  land outside the volume dir (absolute, ``..``, empty segments); refused keys are logged and
  skipped. A store failure raises :class:`VolumeSyncError` naming the volume.
* :meth:`VolumeSync.push`: ``ro`` uploads nothing; ``rw`` uploads regular files that are new or
  differ (size or mtime) from what was pulled and never deletes; ``rwd`` also deletes the
  objects of pulled files the user deleted, and only when the object still has the etag that
  was pulled (a newer object written by someone else is kept). Symlinks and other special files
  are never followed or uploaded. A volume pushed successfully has its host dir removed; a
  failure keeps it and raises :class:`VolumeSyncError`. A missing volume dir pushes nothing.
* Each datastore (endpoint, region, keys) gets its own store from ``store_factory``; they are
  cached and closed by :meth:`close`. Credentials are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

from agent import userfs
from agent.objectstore import ObjectInfo, S3ObjectStore
from agent.workspace.manifest import utf8
from agent.workspace.packer import open_large
from agent.workspace.scan import Scanned, ScanResult, scan
from common import wire

log = logging.getLogger(__name__)

ProgressCallback = Callable[[wire.Progress], None]


class VolumeStore(Protocol):
    """The part of :class:`agent.objectstore.ObjectStore` volumes use."""

    async def put_file(
        self, bucket: str, key: str, body: BinaryIO | None, metadata: dict[str, str]
    ) -> None: ...

    async def get_file(self, bucket: str, key: str, out: BinaryIO) -> dict[str, str]: ...

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]: ...

    async def delete(self, bucket: str, keys: list[str]) -> None: ...

    async def close(self) -> None: ...


StoreFactory = Callable[[wire.VolumeAssignment], VolumeStore]


def s3_store(assigned: wire.VolumeAssignment) -> VolumeStore:
    return S3ObjectStore(
        assigned.endpoint, assigned.region, assigned.access_key, assigned.secret_key
    )


class VolumeSyncError(Exception):
    """A volume's pull or push failed; the message names the volume."""


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


class Mount(NamedTuple):
    """A bind mount for the container: host dir → mount path (a plain tuple to the runtime)."""

    source: str
    target: str
    read_only: bool


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    etag: str


class VolumeSync:
    def __init__(
        self,
        volumes_dir: str,
        *,
        store_factory: StoreFactory = s3_store,
        concurrency: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.volumes_dir = volumes_dir
        self.store_factory = store_factory
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self._stores: dict[tuple[str, str, str, str], VolumeStore] = {}

    # ------------------------------------------------------------ paths

    def notebook_dir(self, notebook: str) -> str:
        return os.path.join(self.volumes_dir, notebook)

    def volume_dir(self, notebook: str, index: int) -> str:
        return os.path.join(self.notebook_dir(notebook), str(index))

    def _manifest_path(self, notebook: str, index: int) -> str:
        return self.volume_dir(notebook, index) + ".pulled.json"

    def mounts(self, notebook: str, volumes: list[wire.VolumeAssignment]) -> list[Mount]:
        return [
            Mount(
                source=self.volume_dir(notebook, i),
                target=assigned.volume.mount_path.rstrip("/") or "/",
                read_only=assigned.volume.permission == "ro",
            )
            for i, assigned in enumerate(volumes)
        ]

    def _store(self, assigned: wire.VolumeAssignment) -> VolumeStore:
        key = (assigned.endpoint, assigned.region, assigned.access_key, assigned.secret_key)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = self.store_factory(assigned)
        return store

    async def close(self) -> None:
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            try:
                await store.close()
            except Exception as exc:
                log.warning("closing a volume store failed (ignored): %s", exc)

    # ------------------------------------------------------------ pull

    async def pull(
        self,
        notebook: str,
        volumes: list[wire.VolumeAssignment],
        progress: ProgressCallback | None = None,
    ) -> None:
        """Make every volume's host dir ready (pulled, or kept from before)."""
        for i, assigned in enumerate(volumes):
            try:
                await self._pull_one(notebook, i, assigned, progress)
            except VolumeSyncError:
                raise
            except Exception as exc:
                shutil.rmtree(self.volume_dir(notebook, i) + ".pulling", ignore_errors=True)
                raise VolumeSyncError(
                    f"volume {describe(assigned.volume)} pull failed: {exc}"
                ) from exc

    async def _pull_one(
        self,
        notebook: str,
        index: int,
        assigned: wire.VolumeAssignment,
        progress: ProgressCallback | None,
    ) -> None:
        volume = assigned.volume
        target = self.volume_dir(notebook, index)
        if os.path.isdir(target):
            log.info(
                "notebook=%s volume %d (%s) host dir exists, using it as is",
                notebook,
                index,
                describe(volume),
            )
            return
        prefix = key_prefix(volume)
        store = self._store(assigned)
        objects = await store.list(volume.container, prefix)
        staging = target + ".pulling"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        staging_fd = userfs.open_root(staging)
        # Every directory and file of the pull is made relative to descriptors, O_NOFOLLOW and
        # O_EXCL: nothing is written through a link or over an entry that is already there.
        dirs = userfs.DirFds(staging_fd)
        try:
            await self._fetch_all(notebook, volume, store, objects, prefix, dirs, progress, index)
        finally:
            dirs.close()
            os.close(staging_fd)
        os.rename(staging, target)

    async def _fetch_all(
        self,
        notebook: str,
        volume: wire.Volume,
        store: VolumeStore,
        objects: list[ObjectInfo],
        prefix: str,
        dirs: userfs.DirFds,
        progress: ProgressCallback | None,
        index: int,
    ) -> None:
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
        await _bounded(
            (lambda info=info, rel=rel: fetch(info, rel) for info, rel in wanted),
            self.concurrency,
        )
        _write_manifest(self._manifest_path(notebook, index), pulled)
        log.info(
            "notebook=%s volume %d (%s) pulled: %d files, %d bytes, %d keys refused",
            notebook,
            index,
            describe(volume),
            len(pulled),
            total_bytes,
            refused,
        )

    # ------------------------------------------------------------ push

    async def push(
        self,
        notebook: str,
        volumes: list[wire.VolumeAssignment],
        progress: ProgressCallback | None = None,
    ) -> None:
        """Push every volume (all are tried); raises the first failure after trying all."""
        failures: list[str] = []
        for i, assigned in enumerate(volumes):
            try:
                await self._push_one(notebook, i, assigned, progress)
            except Exception as exc:
                message = f"volume {describe(assigned.volume)} push failed: {exc}"
                log.warning("notebook=%s %s; keeping its host dir", notebook, message)
                failures.append(message)
        if failures:
            raise VolumeSyncError("; ".join(failures))
        self._drop_notebook_dir_if_empty(notebook)

    async def _push_one(
        self,
        notebook: str,
        index: int,
        assigned: wire.VolumeAssignment,
        progress: ProgressCallback | None,
    ) -> None:
        volume = assigned.volume
        directory = self.volume_dir(notebook, index)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return
        if volume.permission == "ro":
            self._remove_volume(notebook, index)
            return
        pulled = _read_manifest(self._manifest_path(notebook, index))
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
        store = self._store(assigned)
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
        await _bounded(
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
            index,
            describe(volume),
            len(uploads),
            deleted,
        )
        self._remove_volume(notebook, index)

    # ------------------------------------------------------------ host dirs

    def _remove_volume(self, notebook: str, index: int) -> None:
        shutil.rmtree(self.volume_dir(notebook, index), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._manifest_path(notebook, index))

    def _drop_notebook_dir_if_empty(self, notebook: str) -> None:
        try:
            os.rmdir(self.notebook_dir(notebook))
        except OSError:
            pass  # absent, or still holding a kept volume

    async def remove(self, notebook: str) -> None:
        """Drop every volume host dir of ``notebook`` without pushing (delete)."""
        await asyncio.to_thread(shutil.rmtree, self.notebook_dir(notebook), True)


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


async def _bounded(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run the jobs, at most ``limit`` at once; after all finished, raise the first error."""
    semaphore = asyncio.Semaphore(limit)

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
