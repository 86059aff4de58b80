"""Restoring a snapshot into a fresh directory.

``await restore(store, bucket, prefix, directory, snapshot=None, ...) -> RestoreResult``
restores ``snapshot`` (default: the newest; none at all is an error unless ``allow_empty``, an
unreadable newest manifest unless ``allow_older``) into ``<directory>.restoring`` and renames
that to ``directory``, which must not exist; a failed restore leaves neither behind. The manifest
is checked first: an absolute path, a ``..`` component or a path below one of its symlinks
refuses the whole restore with :class:`~agent.workspace.manifest.UnsafePath` naming the path.

Holes of sparse files (chunks recorded as ``""``) are neither downloaded nor written, hard links
are made as links to their first path, and the directory gets its own recorded mode and mtime.

Downloads run ``concurrency`` at a time: a chunk is one GET; the blobs needed from a pack are
sorted by offset and neighbours (gaps up to :data:`COALESCE_GAP`) are fetched as one ranged GET
of at most :data:`RANGE_MAX` bytes. Every blob is checked against its BLAKE3 id. Modes and
mtimes are applied after the contents, symlinks are created after every file (so no write can
pass through one), and directories get their modes and mtimes last, deepest first.

With ``index_dir`` the local index is seeded from the restored tree, so the next push of the
same prefix reads nothing it did not change.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field

from agent.objectstore import NotFound, ObjectStore
from agent.workspace import manifest as mf
from agent.workspace.engine import CorruptManifest, load_manifest, newest_readable, snapshot_ids
from agent.workspace.manifest import Blob
from agent.workspace.packer import unpack
from agent.workspace.progress import ProgressCallback, Reporter
from agent.workspace.scan import RACY_NS, LocalIndex
from agent.workspace.workers import cpu_slots, executor, run_all

RESTORING_SUFFIX = ".restoring"
COALESCE_GAP = 256 * 1024
RANGE_MAX = 32 * 1024 * 1024

#: Where a content id is written: (relative path, file offset, whole file?).
Target = tuple[str, int, bool]


class SnapshotNotFound(Exception):
    """No snapshot to restore where one was needed: the message names the prefix."""


class OlderSnapshotOnly(Exception):
    """The newest snapshots' manifests do not decode and falling back was not allowed: the
    message names each unreadable one."""


@dataclass
class RestoreResult:
    snapshot: mf.SnapshotInfo | None
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    downloaded_bytes: int = 0
    requests: int = 0
    seconds: float = 0.0
    #: Newer snapshots skipped because their manifests do not decode (``"id: why"``).
    skipped_snapshots: list[str] = field(default_factory=list)
    hard_links: int = 0


async def restore(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    directory: str,
    *,
    snapshot: str | None = None,
    concurrency: int = 16,
    progress: ProgressCallback | None = None,
    index_dir: str | None = None,
    progress_phase: str = "restore",
    allow_empty: bool = False,
    allow_older: bool = False,
) -> RestoreResult:
    """Restore ``snapshot`` (default: the newest) into ``directory``, which must not exist.

    No snapshot at all under ``prefix`` raises :class:`SnapshotNotFound` unless
    ``allow_empty`` (a notebook's first start: an empty directory). When the newest manifests
    do not decode, the newest readable one is restored only with ``allow_older`` (the skipped
    ones are named in :attr:`RestoreResult.skipped_snapshots`); otherwise
    :class:`OlderSnapshotOnly` is raised, and when none decodes at all,
    :class:`~agent.workspace.engine.CorruptManifest`. Whatever fails, nothing is left behind:
    neither ``directory`` nor its ``.restoring`` staging dir."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    directory = directory.rstrip("/")
    if os.path.lexists(directory):
        raise FileExistsError(f"restore target {directory} already exists")
    staging = directory + RESTORING_SUFFIX
    try:
        return await _restore(
            store,
            bucket,
            prefix,
            directory,
            staging,
            snapshot=snapshot,
            concurrency=concurrency,
            progress=progress,
            index_dir=index_dir,
            progress_phase=progress_phase,
            allow_empty=allow_empty,
            allow_older=allow_older,
            started=started,
        )
    except BaseException:
        # Shielded: a cancelled restore still removes its half-written staging dir.
        await asyncio.shield(loop.run_in_executor(executor(), _remove, staging))
        raise


async def _restore(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    directory: str,
    staging: str,
    *,
    snapshot: str | None,
    concurrency: int,
    progress: ProgressCallback | None,
    index_dir: str | None,
    progress_phase: str,
    allow_empty: bool,
    allow_older: bool,
    started: float,
) -> RestoreResult:
    loop = asyncio.get_running_loop()
    manifest = None
    manifest_bytes = b""
    skipped: list[str] = []
    where = f"s3://{bucket}/{prefix}"
    if snapshot:
        snapshot_id: str | None = snapshot
    else:
        ids = await snapshot_ids(store, bucket, prefix)
        # The newest snapshot that decodes: a manifest truncated by a killed PUT is skipped,
        # and said so.
        snapshot_id, manifest, manifest_bytes, skipped = await newest_readable(
            store, bucket, prefix, ids
        )
        if snapshot_id is None:
            if skipped:
                raise CorruptManifest(f"no snapshot in {where} can be read: " + "; ".join(skipped))
            if not allow_empty:
                raise SnapshotNotFound(f"no snapshot in {where}")
            await loop.run_in_executor(executor(), _reset, staging)
            await loop.run_in_executor(executor(), os.rename, staging, directory)
            return RestoreResult(snapshot=None, seconds=time.monotonic() - started)
        if skipped and not allow_older:
            raise OlderSnapshotOnly(
                f"the newest snapshot of {where} cannot be read ({'; '.join(skipped)}); "
                f"the newest readable one is {snapshot_id}: restore it by id, or allow older"
            )
    try:
        if manifest is None:
            manifest, manifest_bytes = await load_manifest(store, bucket, prefix, snapshot_id)
    except NotFound:
        raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist in {where}") from None
    mf.check_paths(manifest.entries)
    targets = await loop.run_in_executor(executor(), _prepare, staging, manifest)
    ranges = _plan(manifest.blobs, targets)
    result = RestoreResult(snapshot=manifest.info(), skipped_snapshots=skipped)
    reporter = Reporter(progress, progress_phase)
    reporter.total(result.snapshot.files, result.snapshot.logical_bytes)  # type: ignore[union-attr]
    limit = asyncio.Semaphore(max(1, concurrency))

    async def fetch(key: str, start: int, end: int, items: list[tuple[str, Blob]]) -> None:
        async with limit:
            whole = key.startswith(mf.CHUNKS)
            data = await store.get_bytes(
                bucket, prefix + key, None if whole else start, None if whole else end
            )
            result.requests += 1
            result.downloaded_bytes += len(data)
            files, nbytes = await loop.run_in_executor(
                executor(), _write, staging, data, 0 if whole else start, items, targets
            )
        reporter.add(files, nbytes)

    await run_all(fetch(*planned) for planned in ranges)
    files = [entry for entry in manifest.entries if entry.kind == "f" and not entry.link]
    step = max(1, -(-len(files) // cpu_slots()))
    await asyncio.gather(
        *(
            loop.run_in_executor(executor(), _file_attributes, staging, files[i : i + step])
            for i in range(0, len(files), step)
        )
    )
    counts = await loop.run_in_executor(executor(), _finish, staging, manifest)
    result.files, result.dirs, result.symlinks, result.bytes, result.hard_links = counts
    await loop.run_in_executor(executor(), os.rename, staging, directory)
    if index_dir is not None:
        await loop.run_in_executor(
            executor(), _seed_index, index_dir, bucket, prefix, directory, manifest, manifest_bytes
        )
    reporter.emit(force=True)
    result.seconds = time.monotonic() - started
    return result


def _remove(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def _reset(path: str) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)


def _prepare(staging: str, manifest: mf.Manifest) -> dict[str, list[Target]]:
    """Wipe and recreate ``staging`` with every directory, empty files and preallocated
    multi-chunk files; returns where each content id goes."""
    _reset(staging)
    targets: dict[str, list[Target]] = defaultdict(list)
    chunk_size = manifest.chunk_size
    for entry in manifest.entries:
        path = os.path.join(staging, entry.path)
        if entry.kind == "d":
            os.makedirs(path, exist_ok=True)
        elif entry.kind == "f" and not entry.link:  # a hard link is made in _finish
            if not entry.chunks:
                open(path, "wb").close()
            elif len(entry.chunks) == 1 and entry.chunks[0]:
                targets[entry.chunks[0]].append((entry.path, 0, True))
            else:
                # Holes ("" chunks) are never written: the truncate leaves them sparse.
                with open(path, "wb") as out:
                    out.truncate(entry.size)
                for i, cid in enumerate(entry.chunks):
                    if cid:
                        targets[cid].append((entry.path, i * chunk_size, False))
    return targets


def _plan(
    blobs: dict[str, Blob], targets: dict[str, list[Target]]
) -> list[tuple[str, int, int, list[tuple[str, Blob]]]]:
    """``(key, start, end, blobs)`` downloads: whole chunks, coalesced ranges of packs."""
    by_key: dict[str, list[tuple[str, Blob]]] = defaultdict(list)
    for cid in targets:
        blob = blobs.get(cid)
        if blob is None:
            raise mf.UnsafePath(f"manifest names content {cid} but not where it is stored")
        by_key[blob.key].append((cid, blob))
    planned: list[tuple[str, int, int, list[tuple[str, Blob]]]] = []
    for key, items in by_key.items():
        items.sort(key=lambda item: item[1].offset)
        start = end = -1
        group: list[tuple[str, Blob]] = []
        for cid, blob in items:
            blob_end = blob.offset + blob.length
            if group and (blob.offset - end > COALESCE_GAP or blob_end - start > RANGE_MAX):
                planned.append((key, start, end, group))
                group = []
            if not group:
                start = blob.offset
            group.append((cid, blob))
            end = max(end, blob_end) if len(group) > 1 else blob_end
        if group:
            planned.append((key, start, end, group))
    # Big downloads first, so the last seconds are not one large GET on its own.
    planned.sort(key=lambda p: p[2] - p[1], reverse=True)
    return planned


def _write(
    staging: str,
    data: bytes,
    start: int,
    items: list[tuple[str, Blob]],
    targets: dict[str, list[Target]],
) -> tuple[int, int]:
    view = memoryview(data)
    files = nbytes = 0
    for cid, blob in items:
        lo = blob.offset - start
        raw = unpack(view[lo : lo + blob.length], blob, cid)
        for relpath, offset, whole in targets[cid]:
            path = os.path.join(staging, relpath)
            if whole:
                with open(path, "wb") as out:
                    out.write(raw)
                files += 1
            else:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, raw, offset)
                finally:
                    os.close(fd)
            nbytes += len(raw)
    return files, nbytes


def _file_attributes(staging: str, files: list[mf.Entry]) -> None:
    """Modes (unless already what ``open`` gave) and mtimes of regular files."""
    created = 0o666 & ~_umask()
    for entry in files:
        path = os.path.join(staging, entry.path)
        # setuid/setgid are not restored: the agent writes as root.
        if entry.mode & 0o777 != created:
            os.chmod(path, entry.mode & 0o777)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))


def _umask() -> int:
    """The process umask, read without os.umask (which would change it for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o7777  # unknown: chmod every file


def _finish(staging: str, manifest: mf.Manifest) -> tuple[int, int, int, int, int]:
    """Hard links, symlinks, then directory modes and mtimes (deepest first, the root last);
    returns the counts (files, dirs, symlinks, bytes, hard links)."""
    files = dirs = links = nbytes = hard = 0
    directories: list[mf.Entry] = []
    symlinks: list[mf.Entry] = []
    for entry in manifest.entries:
        if entry.kind == "f":
            files += 1
            if entry.link:
                os.link(
                    os.path.join(staging, entry.link),
                    os.path.join(staging, entry.path),
                    follow_symlinks=False,
                )
                hard += 1
            else:
                nbytes += entry.size
        elif entry.kind == "l":
            symlinks.append(entry)
        else:
            directories.append(entry)
    for entry in symlinks:
        path = os.path.join(staging, entry.path)
        os.symlink(entry.target, path)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        links += 1
    directories.sort(key=lambda e: e.path.count("/"), reverse=True)
    for entry in directories:
        path = os.path.join(staging, entry.path)
        os.chmod(path, entry.mode & 0o1777)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
        dirs += 1
    if manifest.root_mode >= 0:
        os.chmod(staging, manifest.root_mode & 0o1777)
    if manifest.root_mtime_ns >= 0:
        os.utime(staging, ns=(manifest.root_mtime_ns, manifest.root_mtime_ns))
    return files, dirs, links, nbytes, hard


def _seed_index(
    index_dir: str,
    bucket: str,
    prefix: str,
    directory: str,
    manifest: mf.Manifest,
    manifest_bytes: bytes,
) -> None:
    now_ns = time.time_ns()
    rows: dict[str, tuple[int, int, int, int, list[str]]] = {}
    for entry in manifest.entries:
        if entry.kind != "f" or now_ns - entry.mtime_ns < RACY_NS:
            continue
        st = os.lstat(os.path.join(directory, entry.path))
        if st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns:
            rows[entry.path] = (
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                st.st_ctime_ns,
                list(entry.chunks),
            )
    LocalIndex(index_dir, bucket, prefix).save(manifest.id, manifest_bytes, rows)
