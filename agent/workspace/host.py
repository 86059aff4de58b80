"""A notebook's directories on this host and their snapshots in object storage.

``workspaces_dir/<id>`` is ``/workspace``; ``scratch_dir/<id>`` is ``/data`` (never synced).
Rules (design.md, "Lifecycle"): an existing host workspace dir is used as is (it only survives a
failed push, so it is never older than object storage); otherwise the newest snapshot is
restored. A notebook that has started before (``initialized``) must find the marker
:data:`MARKER` in its workspace, or it would silently start empty; a first start creates it.

Snapshots of notebook ``<id>`` live under ``<bucket>/<id>/workspace/`` (the engine's layout,
:mod:`agent.workspace.manifest`); the local index lives in ``state_dir/workspace-index``.

API (all coroutines unless noted; pushes of one notebook are serialised):

* ``prepare(notebook, initialized, *, progress=None, source_notebook=None, snapshot=None)``:
  make ``/workspace`` and ``/data`` ready; a restore may come from another notebook's snapshot
  (a fork's first start).
* ``push(notebook, *, kind="stop", progress=None) -> PushResult | None``: snapshot the host dir
  (``None`` when there is none), then apply retention (and GC when retention dropped something).
  ``PushResult.snapshot`` is the committed :class:`common.wire.SnapshotInfo` (the parent's when
  ``PushResult.unchanged``: nothing changed, nothing written), ``PushResult.kept`` the snapshot
  ids retention kept.
* ``checkpoint(notebook, progress=None) -> PushResult | None``: the same while the notebook
  runs, kind ``"checkpoint"``, progress phase ``"checkpoint"``.
* ``snapshots(notebook) -> list[SnapshotInfo]`` (oldest first).
* ``restore(notebook, *, source_notebook=None, snapshot=None, progress=None) -> RestoreResult``:
  restore into the (absent) host dir via ``<dir>.restoring``.
* ``warm_up()``: build the store's client and check the bucket ahead of the first sync.
* ``collect_garbage(notebook) -> int``; ``delete_remote(notebook) -> int``; directory helpers
  ``workspace_dir``, ``scratch``, ``has_workspace`` (plain functions), ``remove_scratch``,
  ``remove_workspace_dir``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable

from agent.objectstore import ObjectStore
from agent.userfs import DirFds, create_file, open_root
from agent.workspace import retention
from agent.workspace.engine import PushResult, latest_snapshot_id
from agent.workspace.engine import push as engine_push
from agent.workspace.manifest import Kind
from agent.workspace.progress import ProgressCallback
from agent.workspace.restore import RESTORING_SUFFIX, RestoreResult
from agent.workspace.restore import restore as engine_restore
from agent.workspace.scan import LocalIndex
from common.wire import SnapshotInfo

log = logging.getLogger(__name__)

MARKER = ".workspace.initialized"


class MarkerMissing(Exception):
    pass


def workspace_prefix(notebook: str) -> str:
    return f"{notebook}/workspace/"


class HostWorkspaces:
    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        workspaces_dir: str,
        scratch_dir: str,
        *,
        concurrency: int = 16,
        state_dir: str | None = None,
        retention_last: int = 5,
        retention_daily: int = 7,
        gc_grace_s: float = retention.GRACE_S,
        on_sync: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.store = store
        #: Told of every restore and push that completed: ``(kind, seconds, bytes moved)``
        #: (the agent's metrics).
        self.on_sync = on_sync
        self.bucket = bucket
        self.workspaces_dir = workspaces_dir
        self.scratch_dir = scratch_dir
        self.concurrency = concurrency
        # Without a state dir the index sits beside the workspaces (never inside one).
        base = state_dir if state_dir else workspaces_dir.rstrip("/") + ".state"
        self.index_dir = os.path.join(base, "workspace-index")
        self.retention_last = retention_last
        self.retention_daily = retention_daily
        self.gc_grace_s = gc_grace_s
        self._bucket_ready = False
        self._locks: dict[str, asyncio.Lock] = {}

    def workspace_dir(self, notebook: str) -> str:
        return os.path.join(self.workspaces_dir, notebook)

    def scratch(self, notebook: str) -> str:
        return os.path.join(self.scratch_dir, notebook)

    def has_workspace(self, notebook: str) -> bool:
        return os.path.isdir(self.workspace_dir(notebook))

    def _lock(self, notebook: str) -> asyncio.Lock:
        return self._locks.setdefault(notebook, asyncio.Lock())

    async def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            await self.store.ensure_bucket(self.bucket)
            self._bucket_ready = True

    async def warm_up(self) -> None:
        """Build the store's client and check the bucket now, so the first start's restore
        does not pay for it (half a second: botocore's client and the first connection).
        Failing is harmless: the first restore or push tries again."""
        try:
            await self._ensure_bucket()
        except Exception as exc:
            log.info("object storage not ready at start-up (%s); the first sync tries again", exc)

    async def prepare(
        self,
        notebook: str,
        initialized: bool,
        *,
        progress: ProgressCallback | None = None,
        source_notebook: str | None = None,
        snapshot: str | None = None,
    ) -> list[str]:
        """Make ``/workspace`` and ``/data`` ready. Raises :class:`MarkerMissing` (after removing
        the just-restored dir, which holds nothing new) or the store's error. Returns notes for
        the notebook's state history: a restore that had to skip an unreadable newer snapshot
        says which one it restored instead."""
        directory = self.workspace_dir(notebook)
        restored = False
        notes: list[str] = []
        if os.path.isdir(directory) and source_notebook is None:
            newer = await self.written_elsewhere(notebook)
            if newer is not None:
                # A copy left here while the notebook ran on another host: older than what
                # that host saved. Set it aside (never deleted) and restore the newest.
                aside = f"{directory}.superseded-{int(time.time())}"
                await asyncio.to_thread(os.rename, directory, aside)
                log.warning(
                    "notebook=%s host dir is older than snapshot %s saved by another host; "
                    "moved it to %s and restoring the snapshot",
                    notebook,
                    newer,
                    aside,
                )
        if not os.path.isdir(directory):
            result = await self.restore(
                notebook, source_notebook=source_notebook, snapshot=snapshot, progress=progress
            )
            restored = True
            if result.skipped_snapshots and result.snapshot is not None:
                notes.append(
                    f"restored older snapshot {result.snapshot.id}: skipped unreadable "
                    + "; ".join(result.skipped_snapshots)
                )
        if not await asyncio.to_thread(_ensure_marker, directory, create=not initialized):
            if restored:
                await asyncio.to_thread(shutil.rmtree, directory, True)
            raise MarkerMissing(
                f"workspace marker {MARKER} is missing from the "
                f"{'restored' if restored else 'host'} workspace although the notebook has "
                "started before; refusing to start it with an empty workspace"
            )
        await asyncio.to_thread(os.makedirs, self.scratch(notebook), exist_ok=True)
        return notes

    async def restore(
        self,
        notebook: str,
        *,
        source_notebook: str | None = None,
        snapshot: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """Restore ``snapshot`` (default the newest) of ``source_notebook`` (default this
        notebook) into this notebook's host dir, which must not exist."""
        await self._ensure_bucket()
        source = source_notebook or notebook
        own = source == notebook
        await asyncio.to_thread(os.makedirs, self.workspaces_dir, exist_ok=True)
        result = await engine_restore(
            self.store,
            self.bucket,
            workspace_prefix(source),
            self.workspace_dir(notebook),
            snapshot=snapshot,
            concurrency=self.concurrency,
            progress=progress,
            # Seeding the index only makes sense for the prefix this dir will push to.
            index_dir=self.index_dir if own else None,
            # A notebook's first start has no snapshot yet (and one that started before without
            # any fails on its missing marker); an unreadable newest snapshot falls back to the
            # one before it, and prepare() puts that in the notebook's history.
            allow_empty=snapshot is None,
            allow_older=snapshot is None,
        )
        log.info(
            "notebook=%s workspace restored from %s snapshot %s: %d files, %d dirs, "
            "%d symlinks, %d bytes (%d downloaded in %d requests) in %.2fs",
            notebook,
            source,
            result.snapshot.id if result.snapshot else "(none)",
            result.files,
            result.dirs,
            result.symlinks,
            result.bytes,
            result.downloaded_bytes,
            result.requests,
            result.seconds,
        )
        if self.on_sync is not None:
            self.on_sync("restore", result.seconds, result.downloaded_bytes)
        return result

    async def push(
        self,
        notebook: str,
        *,
        kind: Kind = "stop",
        progress: ProgressCallback | None = None,
    ) -> PushResult | None:
        """Snapshot the host workspace dir; ``None`` when there is none (nothing to save)."""
        directory = self.workspace_dir(notebook)
        if not os.path.isdir(directory):
            return None
        await self._ensure_bucket()
        prefix = workspace_prefix(notebook)
        async with self._lock(notebook):
            result = await engine_push(
                self.store,
                self.bucket,
                prefix,
                directory,
                index_dir=self.index_dir,
                kind=kind,
                concurrency=self.concurrency,
                progress=progress,
                progress_phase="checkpoint" if kind == "checkpoint" else "push",
            )
            kept, dropped = await retention.apply_retention(
                self.store,
                self.bucket,
                prefix,
                keep_last=self.retention_last,
                keep_daily=self.retention_daily,
            )
            result.kept = kept
            if dropped:
                await retention.collect_garbage(
                    self.store, self.bucket, prefix, grace_s=self.gc_grace_s
                )
        log.info(
            "notebook=%s workspace %s snapshot %s: %d files, %d bytes, read %d files, "
            "uploaded %d objects / %d bytes, reused %d, in %.2fs",
            notebook,
            "unchanged" if result.unchanged else kind,
            result.snapshot.id,
            result.files,
            result.logical_bytes,
            result.read_files,
            result.uploaded_objects,
            result.uploaded_bytes,
            result.reused_objects,
            result.seconds,
        )
        if self.on_sync is not None:
            self.on_sync(kind, result.seconds, result.uploaded_bytes)
        return result

    async def written_elsewhere(self, notebook: str) -> str | None:
        """The newest snapshot of ``notebook`` if this host did not write or restore it: another
        host has worked on the notebook since (it was re-placed while this host was cut off),
        so this host's copy must not become the newest. ``None`` when this host's copy is the
        continuation of the newest snapshot, or there is none."""
        prefix = workspace_prefix(notebook)
        latest = await latest_snapshot_id(self.store, self.bucket, prefix)
        if latest is None:
            return None
        index = LocalIndex(self.index_dir, self.bucket, prefix)
        index.load()
        return None if index.snapshot == latest else latest

    async def checkpoint(
        self, notebook: str, progress: ProgressCallback | None = None
    ) -> PushResult | None:
        return await self.push(notebook, kind="checkpoint", progress=progress)

    async def snapshots(self, notebook: str) -> list[SnapshotInfo]:
        await self._ensure_bucket()
        return await retention.list_snapshots(self.store, self.bucket, workspace_prefix(notebook))

    async def collect_garbage(self, notebook: str) -> int:
        await self._ensure_bucket()
        async with self._lock(notebook):
            return await retention.collect_garbage(
                self.store, self.bucket, workspace_prefix(notebook), grace_s=self.gc_grace_s
            )

    async def remove_scratch(self, notebook: str) -> None:
        await asyncio.to_thread(_rmtree, self.scratch(notebook))

    async def remove_workspace_dir(self, notebook: str) -> None:
        directory = self.workspace_dir(notebook)
        await asyncio.to_thread(_rmtree, directory)
        await asyncio.to_thread(_rmtree, directory + RESTORING_SUFFIX)

    async def delete_remote(self, notebook: str) -> int:
        """Delete every snapshot and object of the notebook; returns how many objects."""
        await self._ensure_bucket()
        prefix = workspace_prefix(notebook)
        keys = [info.key for info in await self.store.list(self.bucket, prefix)]
        # Manifests first: an interrupted delete never leaves a snapshot missing its objects.
        keys.sort(key=lambda key: not key.startswith(prefix + "snapshots/"))
        if keys:
            await self.store.delete(self.bucket, keys)
        return len(keys)


def _ensure_marker(directory: str, *, create: bool) -> bool:
    """Whether the workspace has its marker (any entry by that name counts, a link too: it is
    never followed); with ``create``, one is made when missing, never through a link or over
    anything the user put there."""
    root_fd = open_root(directory)
    try:
        try:
            os.stat(MARKER, dir_fd=root_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            if not create:
                return False
        with DirFds(root_fd) as dirs:
            try:
                os.close(create_file(dirs, MARKER))
            except FileExistsError:  # made meanwhile: it is there
                pass
        return True
    finally:
        os.close(root_fd)


def _rmtree(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
