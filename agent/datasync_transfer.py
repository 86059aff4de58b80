"""One volume of a RUNNING notebook synced with its bucket prefix while the container uses it
(datasync, design.md "Datasync"): the per-volume half of :mod:`agent.datasync`. The files are
read and put in place by :mod:`agent.live_files`; the pull record (``<i>.pulled.json``, see
:mod:`agent.volumes`) is kept up to date, so the stop's push later moves only what changed
after the datasync and ``rwd`` tells the files it pushed from files the user deleted.

Push (``rw``, ``rwd``), the stop's rules with the volume dir kept:

* uploads regular files that are new or differ (size, mtime) from the record, each a whole
  version (:func:`agent.live_files.read_whole`, :func:`agent.live_files.upload_large`); one
  that kept changing is not uploaded (``unstable``: the stop's push takes it). Links, special
  files, names that are not UTF-8 and files that vanished are skipped and named.
* the record gets each uploaded version's size, mtime and the new object's ETag; a version
  modified within :data:`agent.workspace.scan.RACY_NS` of its read is recorded with mtime
  ``-1``, so a write landing in the same timestamp tick is not taken for "unchanged" later
  (the stop's push uploads it again).
* ``rwd`` deletes the object of a recorded file that is gone (the file, or a directory above
  it, is absent when looked at again just before) and only while the object still has the
  recorded ETag; an object written since is kept. Either way the entry leaves the record.

Pull (any permission), never clobbering the user's files:

* an object whose ETag is the recorded one is unchanged; a new one is downloaded unless
  something is at its path (a conflict: the user's is kept); a changed one replaces the file
  only while that file is still the pulled version (same size and mtime), else it is a
  conflict. Objects deleted in the bucket leave the files here alone.
* downloads go to ``<i>.datasync/`` (the agent's own, beside the volume dir, on the same file
  system), get the volume dir's owner and the object's time as mtime, and are linked in
  (:func:`agent.live_files.place_new`) or swapped in (:func:`agent.live_files.place_over`).
  Keys that would leave the volume dir are refused, as at the start's pull.

``keep_going()`` is asked before each file: ``False`` (the notebook is being deleted) ends
the transfer with :class:`Abandoned`, the record still written for what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent import live_files, userfs
from agent.objectstore import ObjectInfo
from agent.volume_transfer import (
    RecordEntry,
    VolumeStore,
    bounded,
    describe,
    key_prefix,
    read_record,
    safe_relative,
    write_record,
)
from agent.workspace.manifest import utf8
from agent.workspace.progress import ProgressCallback, Reporter
from agent.workspace.scan import scan
from common import wire

log = logging.getLogger(__name__)

#: At most this many ``path: what happened`` lines per volume in a result.
MAX_DETAILS = 100


class LiveStore(VolumeStore, Protocol):
    """What datasync needs of :class:`agent.objectstore.S3ObjectStore` besides a volume's."""

    async def put_object(self, bucket: str, key: str, data: bytes) -> str: ...

    async def put_parts(self, bucket, key, size, part_size, read_part, commit) -> str | None: ...


class Abandoned(Exception):
    """The notebook is going away (deleted): the transfer stopped between two files."""


@dataclass
class Outcome:
    """What one volume's transfer did, counted, with the first :data:`MAX_DETAILS` notes."""

    files: int = 0
    bytes: int = 0
    deleted: int = 0
    unchanged: int = 0
    conflicts: int = 0
    unstable: int = 0
    skipped: int = 0
    details: list[str] = field(default_factory=list)

    def note(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.details) < MAX_DETAILS:
            self.details.append(text)


@dataclass
class LiveTransfer:
    """One datasync of volume ``index`` of ``notebook`` through ``store``."""

    notebook: str
    index: int
    volume: wire.Volume
    store: LiveStore
    concurrency: int
    progress: ProgressCallback | None = None
    keep_going: Callable[[], bool] = lambda: True
    outcome: Outcome = field(default_factory=Outcome)

    def _check(self) -> None:
        if not self.keep_going():
            raise Abandoned(f"notebook {self.notebook} is being deleted")

    def _reporter(self, phase: str) -> Reporter:
        return Reporter(self.progress, phase, f"datasync {describe(self.volume)}")

    # ------------------------------------------------------------ push

    async def push(self, directory: str, record: str) -> Outcome:
        """Upload what changed in ``directory`` since ``record``; ``rwd``: delete what went."""
        out = self.outcome
        pulled = await asyncio.to_thread(read_record, record)
        tree = await asyncio.to_thread(scan, directory)
        for what in tree.skipped:
            out.note("skipped", f"{what}; not pushed")
        files: dict[str, int] = {}
        changed = []
        for entry in tree.entries:
            if entry.kind == "l":
                out.note("skipped", f"{entry.path}: a symlink, never followed or pushed")
            if entry.kind != "f":
                continue
            if not utf8(entry.path):
                name = os.fsencode(entry.path)
                out.note("skipped", f"{name!r}: the name is not UTF-8, so it cannot be a key")
                continue
            files[entry.path] = entry.size
            old = pulled.get(entry.path)
            if old is None or (old.size, old.mtime_ns) != (entry.size, entry.mtime_ns):
                changed.append(entry.path)
            else:
                out.unchanged += 1
        owner = (tree.root_uid, tree.root_gid) if tree.root_uid != 0 else None
        reporter = self._reporter("volumes-push")
        reporter.total(len(changed), sum(files[rel] for rel in changed))
        updates: dict[str, RecordEntry] = {}
        dropped: set[str] = set()
        try:
            await bounded(
                [
                    lambda rel=rel: self._upload(directory, rel, owner, updates, reporter)
                    for rel in changed
                ],
                self.concurrency,
            )
            if self.volume.permission == "rwd":
                await self._delete_gone(directory, pulled, files, dropped)
        finally:
            merged = {rel: e for rel, e in pulled.items() if rel not in dropped}
            merged.update(updates)
            await asyncio.to_thread(write_record, record, merged)
        reporter.emit(force=True)
        return out

    async def _upload(
        self,
        directory: str,
        rel: str,
        owner: tuple[int, int] | None,
        updates: dict[str, RecordEntry],
        reporter: Reporter,
    ) -> None:
        self._check()
        out, volume = self.outcome, self.volume
        key = key_prefix(volume) + rel
        try:
            fd, st = await asyncio.to_thread(live_files.open_for_read, directory, rel, owner)
        except userfs.Skipped as exc:
            out.note("skipped", f"{exc}; not pushed")
            reporter.add(1, 0)
            return
        try:
            if st.st_size <= live_files.PART_SIZE:
                read = await asyncio.to_thread(live_files.read_whole, fd)
                got = None
                if read is not None:
                    etag = await self.store.put_object(volume.container, key, read[0])
                    got = (etag, read[1])
            else:

                def put_parts(size, part, read_part, commit):
                    return self.store.put_parts(
                        volume.container, key, size, part, read_part, commit
                    )

                got = await live_files.upload_large(fd, put_parts)
        finally:
            os.close(fd)
        if got is None:
            out.note(
                "unstable",
                f"{rel}: kept changing while read ({userfs.READ_RETRIES + 1} tries); not "
                "pushed now (the stop's push takes it)",
            )
            reporter.add(1, 0)
            return
        etag, version = got
        trusted = not live_files.recently_changed(version)
        updates[rel] = RecordEntry(version.st_size, version.st_mtime_ns if trusted else -1, etag)
        out.files += 1
        out.bytes += version.st_size
        reporter.add(1, version.st_size)

    async def _delete_gone(
        self,
        directory: str,
        pulled: dict[str, RecordEntry],
        files: dict[str, int],
        dropped: set[str],
    ) -> None:
        """``rwd``: the objects of recorded files the user deleted, while still as recorded."""
        out, volume = self.outcome, self.volume
        candidates = sorted(rel for rel in pulled if rel not in files)
        if not candidates:
            return
        self._check()
        prefix = key_prefix(volume)
        remote = {o.key: o for o in await self.store.list(volume.container, prefix)}
        root_fd = await asyncio.to_thread(userfs.open_root, directory)
        deleting: list[str] = []
        try:
            for rel in candidates:
                there = await asyncio.to_thread(live_files.gone, root_fd, rel)
                if there is not None:
                    out.note("skipped", f"{rel}: not deleted in the bucket: {there}")
                    continue
                entry, current = pulled[rel], remote.get(prefix + rel)
                if current is None:
                    dropped.add(rel)  # gone on both sides
                elif entry.etag and current.etag != entry.etag:
                    dropped.add(rel)  # someone else's object now: never deleted
                    out.note("skipped", f"{rel}: changed in the bucket since; not deleted there")
                else:
                    deleting.append(rel)
        finally:
            os.close(root_fd)
        if deleting:
            # Left in the record until deleted: a failure here is retried by the stop's push.
            await self.store.delete(volume.container, [prefix + rel for rel in deleting])
            dropped.update(deleting)
        out.deleted += len(deleting)

    # ------------------------------------------------------------ pull

    async def pull(self, directory: str, record: str, staging: str) -> Outcome:
        """Download what is new or changed in the bucket into ``directory``, through
        ``staging`` (made afresh, removed after)."""
        out, volume = self.outcome, self.volume
        pulled = await asyncio.to_thread(read_record, record)
        prefix = key_prefix(volume)
        objects = await self.store.list(volume.container, prefix)
        wanted: list[tuple[ObjectInfo, str]] = []
        listed: set[str] = set()
        for info in objects:
            rel_key = info.key[len(prefix) :]
            if rel_key.endswith("/"):  # a "directory marker" some tools write
                continue
            rel = safe_relative(rel_key)
            if rel is None:
                out.note("skipped", f"key {info.key!r}: would leave the volume dir; refused")
                continue
            listed.add(rel)
            old = pulled.get(rel)
            if old is not None and old.etag == info.etag:
                out.unchanged += 1
                continue
            wanted.append((info, rel))
        for rel in sorted(set(pulled) - listed):
            out.note("skipped", f"{rel}: deleted in the bucket; the file here is kept")
        reporter = self._reporter("volumes-pull")
        reporter.total(len(wanted), sum(info.size for info, _ in wanted))
        updates: dict[str, RecordEntry] = {}
        await asyncio.to_thread(_fresh_dir, staging)
        root_fd = userfs.open_root(directory)
        staging_fd = userfs.open_root(staging)
        root = os.fstat(root_fd)
        owner = (root.st_uid, root.st_gid)
        names = itertools.count()
        try:
            with userfs.DirFds(root_fd) as dirs:
                await bounded(
                    [
                        lambda info=info, rel=rel: self._fetch(
                            info,
                            rel,
                            pulled.get(rel),
                            dirs,
                            staging_fd,
                            owner,
                            names,
                            updates,
                            reporter,
                        )
                        for info, rel in wanted
                    ],
                    self.concurrency,
                )
        finally:
            os.close(staging_fd)
            os.close(root_fd)
            shutil.rmtree(staging, ignore_errors=True)
            if updates:
                await asyncio.to_thread(write_record, record, {**pulled, **updates})
        reporter.emit(force=True)
        return out

    async def _fetch(
        self,
        info: ObjectInfo,
        rel: str,
        old: RecordEntry | None,
        dirs: userfs.DirFds,
        staging_fd: int,
        owner: tuple[int, int],
        names: itertools.count,
        updates: dict[str, RecordEntry],
        reporter: Reporter,
    ) -> None:
        self._check()
        out = self.outcome
        parent_rel, name = userfs.split(rel)

        def reporter_skip() -> None:
            reporter.add(1, 0)

        try:
            parent_fd = live_files.ensure_dirs(dirs, parent_rel, owner)
        except (userfs.Skipped, OSError) as exc:
            out.note("conflicts", f"{rel}: {exc}; not pulled")
            return reporter_skip()
        # Looked at before the download, and again at the moment it is put in place.
        here = live_files.lstat_at(parent_fd, name)
        conflict = _conflict(here, old)
        if conflict:
            out.note("conflicts", f"{rel}: {conflict}; kept yours, not pulled")
            return reporter_skip()
        temp = f"{next(names)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644, dir_fd=staging_fd)
        try:
            with os.fdopen(fd, "wb") as body:
                await self.store.get_file(self.volume.container, info.key, body)
                body.flush()
                made = os.fstat(body.fileno())
                if (made.st_uid, made.st_gid) != owner:
                    os.fchown(body.fileno(), *owner)  # the volume dir's owner: the user's
                if info.modified > 0:
                    # The object's time, in the past: any later write by the user moves it.
                    os.utime(
                        body.fileno(),
                        ns=(os.fstat(body.fileno()).st_atime_ns, int(info.modified * 1e9)),
                    )
                version = os.fstat(body.fileno())
            # Looked up again, with no await until it is used: the descriptor of the first
            # look may have been closed (and its number reused) by then.
            try:
                parent_fd = live_files.ensure_dirs(dirs, parent_rel, owner)
            except (userfs.Skipped, OSError) as exc:
                out.note("conflicts", f"{rel}: {exc}; not pulled")
                return reporter_skip()
            if old is None:
                placed = live_files.place_new(staging_fd, temp, parent_fd, name)
                why = "appeared here meanwhile"
            else:
                try:
                    placed = live_files.place_over(
                        staging_fd, temp, parent_fd, name, (old.size, old.mtime_ns)
                    )
                except FileNotFoundError:
                    placed = False
                why = "changed here meanwhile"
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=staging_fd)
        if not placed:
            out.note("conflicts", f"{rel}: {why}; kept yours, not pulled")
            return reporter_skip()
        updates[rel] = RecordEntry(version.st_size, version.st_mtime_ns, info.etag)
        out.files += 1
        out.bytes += version.st_size
        reporter.add(1, version.st_size)


def _conflict(here: os.stat_result | None, old: RecordEntry | None) -> str:
    """Why an object may not be put where ``here`` is (``""``: it may)."""
    if old is None:
        return "" if here is None else "something that was not pulled is there"
    if here is None:
        return "deleted here and changed in the bucket"
    if not stat.S_ISREG(here.st_mode):
        return "no longer a regular file here"
    if old.mtime_ns < 0 or (here.st_size, here.st_mtime_ns) != (old.size, old.mtime_ns):
        return "changed here and in the bucket"
    return ""


def _fresh_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path, 0o700)
