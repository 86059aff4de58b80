"""A parallel mirror between a workspace directory and an object-store prefix.

Layout: ``<bucket>/<notebook>/workspace/<relpath>``, one object per regular file or symlink.
Object metadata carries what a plain object cannot:

* ``mode``: permission bits, octal (setuid/setgid/sticky are dropped on restore);
* ``mtime-ns``: modification time in nanoseconds;
* ``symlink``: for a symlink, its percent-encoded target; the object body is empty. Links are
  stored as links and never followed, so a link to ``/etc/passwd`` never uploads the host's file.

``push`` skips files whose size, mtime and mode match the remote object, uploads new and changed
files first and deletes remote extras last, so an interrupted push never loses the previous copy
of a file. ``restore`` writes into ``<dir>.restoring`` and renames it into place only when
complete; keys that would escape the directory (``..``, absolute) are refused and reported.
Empty directories, owners and special files (sockets, FIFOs, devices) are not mirrored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from agent.objectstore import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: ``progress(phase, done, total)`` with phase "upload", "delete" or "download".
ProgressCallback = Callable[[str, int, int], None]

M_MODE = "mode"
M_MTIME = "mtime-ns"
M_SYMLINK = "symlink"
RESTORING_SUFFIX = ".restoring"


def workspace_prefix(notebook: str) -> str:
    return f"{notebook}/workspace/"


class UnsafeKey(ValueError):
    pass


@dataclass
class LocalEntry:
    relpath: str
    path: str
    size: int
    mtime_ns: int
    mode: int
    symlink: str | None = None

    def metadata(self) -> dict[str, str]:
        meta = {M_MODE: format(self.mode, "o"), M_MTIME: str(self.mtime_ns)}
        if self.symlink is not None:
            meta[M_SYMLINK] = quote(self.symlink, safe="")
        return meta

    def matches(self, remote: ObjectInfo) -> bool:
        expected = self.metadata()
        size = 0 if self.symlink is not None else self.size
        return remote.size == size and all(remote.metadata.get(k) == v for k, v in expected.items())


@dataclass
class PushResult:
    uploaded: int = 0
    skipped: int = 0
    deleted: int = 0
    bytes: int = 0


@dataclass
class RestoreResult:
    files: int = 0
    symlinks: int = 0
    bytes: int = 0
    refused: list[str] = field(default_factory=list)


def safe_relpath(key: str, prefix: str) -> str:
    """The relative path of ``key`` under ``prefix``; raises :class:`UnsafeKey` for a key that
    is outside the prefix, empty, absolute, or has ``.``/``..``/empty components."""
    if not key.startswith(prefix):
        raise UnsafeKey(f"key {key!r} is not under {prefix!r}")
    relpath = key[len(prefix) :]
    if not relpath or relpath.startswith("/") or "\x00" in relpath:
        raise UnsafeKey(f"key {key!r} has an empty or absolute path")
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeKey(f"key {key!r} has an empty, '.' or '..' path component")
    return relpath


def scan(directory: str) -> list[LocalEntry]:
    """Regular files and symlinks under ``directory``; symlinks are never followed."""
    entries: list[LocalEntry] = []
    for root, dirnames, filenames in os.walk(directory, followlinks=False):
        # os.walk lists symlinks to directories among dirnames; mirror them as links.
        names = list(filenames)
        for name in list(dirnames):
            if os.path.islink(os.path.join(root, name)):
                dirnames.remove(name)
                names.append(name)
        for name in names:
            path = os.path.join(root, name)
            relpath = os.path.relpath(path, directory).replace(os.sep, "/")
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # deleted while we walked
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append(
                    LocalEntry(relpath, path, 0, st.st_mtime_ns, mode, symlink=os.readlink(path))
                )
            elif stat.S_ISREG(st.st_mode):
                entries.append(LocalEntry(relpath, path, st.st_size, st.st_mtime_ns, mode))
            else:
                log.info("workspace=%s skipping special file %s", directory, relpath)
    return entries


async def _bounded(
    jobs: Iterable[Callable[[], Awaitable[None]]],
    concurrency: int,
    phase: str,
    total: int,
    progress: ProgressCallback | None,
) -> None:
    limit = asyncio.Semaphore(max(1, concurrency))
    done = 0

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        nonlocal done
        async with limit:
            await job()
        done += 1
        if progress is not None:
            progress(phase, done, total)

    tasks = [asyncio.ensure_future(run(job)) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def push(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    directory: str,
    *,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
) -> PushResult:
    """Make ``prefix`` mirror ``directory``. Raises on the first failed upload or delete."""
    local = await asyncio.to_thread(scan, directory)
    remote = {info.key: info for info in await store.list(bucket, prefix, metadata=True)}
    result = PushResult()
    changed: list[LocalEntry] = []
    for entry in local:
        current = remote.get(prefix + entry.relpath)
        if current is not None and entry.matches(current):
            result.skipped += 1
        else:
            changed.append(entry)
    wanted = {prefix + entry.relpath for entry in local}
    extras = sorted(key for key in remote if key not in wanted)

    def upload(entry: LocalEntry) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            source = None if entry.symlink is not None else entry.path
            await store.put_file(bucket, prefix + entry.relpath, source, entry.metadata())
            result.uploaded += 1
            result.bytes += 0 if source is None else entry.size

        return job

    await _bounded(
        [upload(entry) for entry in changed], concurrency, "upload", len(changed), progress
    )
    if extras:
        await store.delete(bucket, extras)
        result.deleted = len(extras)
        if progress is not None:
            progress("delete", len(extras), len(extras))
    return result


def _apply(path: str, meta: dict[str, str]) -> None:
    mode = meta.get(M_MODE)
    if mode is not None:
        os.chmod(path, int(mode, 8) & 0o777)
    mtime = meta.get(M_MTIME)
    if mtime is not None:
        os.utime(path, ns=(int(mtime), int(mtime)))


async def restore(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    directory: str,
    *,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
) -> RestoreResult:
    """Download ``prefix`` into ``directory``, which must not exist yet.

    Files land in ``<directory>.restoring`` (wiped first: a previous attempt was interrupted),
    which is renamed into place once everything is written. Unsafe keys are skipped and
    listed in ``RestoreResult.refused``.
    """
    if os.path.lexists(directory):
        raise FileExistsError(f"restore target {directory} already exists")
    staging = directory.rstrip("/") + RESTORING_SUFFIX
    await asyncio.to_thread(_reset_dir, staging)
    result = RestoreResult()
    objects: list[tuple[ObjectInfo, str]] = []
    for info in await store.list(bucket, prefix):
        try:
            objects.append((info, safe_relpath(info.key, prefix)))
        except UnsafeKey as exc:
            log.warning("workspace=%s refusing object: %s", directory, exc)
            result.refused.append(info.key)

    def download(info: ObjectInfo, relpath: str) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            target = os.path.join(staging, *relpath.split("/"))
            await asyncio.to_thread(os.makedirs, os.path.dirname(target), exist_ok=True)
            meta = await store.get_file(bucket, info.key, target)
            if M_SYMLINK in meta:
                links.append((target, unquote(meta[M_SYMLINK]), meta))
            else:
                await asyncio.to_thread(_apply, target, meta)
                result.files += 1
                result.bytes += info.size

        return job

    # Symlinks are created only after every file is written, so no write can pass through a
    # link planted by the listing (``a`` -> ``/etc`` plus a key ``a/passwd``).
    links: list[tuple[str, str, dict[str, str]]] = []
    await _bounded(
        [download(info, relpath) for info, relpath in objects],
        concurrency,
        "download",
        len(objects),
        progress,
    )
    for target, link_to, meta in links:
        await asyncio.to_thread(_make_symlink, target, link_to, meta)
        result.symlinks += 1
    await asyncio.to_thread(os.rename, staging, directory)
    return result


def _make_symlink(target: str, link_to: str, meta: dict[str, str]) -> None:
    os.unlink(target)  # the empty file get_file wrote
    os.symlink(link_to, target)
    mtime = meta.get(M_MTIME)
    if mtime is not None:
        os.utime(target, ns=(int(mtime), int(mtime)), follow_symlinks=False)


def _reset_dir(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)


async def delete_prefix(store: ObjectStore, bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix``; returns how many there were."""
    keys = [info.key for info in await store.list(bucket, prefix)]
    if keys:
        await store.delete(bucket, keys)
    return len(keys)
