"""Data volumes: objects of a user's own bucket pulled into a host dir, bind mounted into the
notebook, and (``rw``, ``rwd``) pushed back after the container stopped (design.md, "Volumes").
:class:`VolumeSync` owns the host dirs, the stores and the errors; what one volume's pull or
push transfers is :mod:`agent.volume_transfer`.

Layout under ``volumes_dir/<notebook>/``: ``<i>`` is volume ``i``'s mount source, and
``<i>.pulled.json`` records what the pull wrote (relative path → size, mtime, etag), which is
how a push tells additions and changes from untouched files, and user deletions (``rwd``) from
files that were never there. A pull writes into ``<i>.pulling`` and renames it into place, so
an existing ``<i>`` is always a complete pull, possibly with the user's unpushed changes (it
survives a failed push): a start finding it uses it as is.

Contracts:

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
* One notebook's volume syncs run one at a time (:meth:`VolumeSync.lock`): the start's pull,
  the stop's push, the removal at delete, and datasync (:mod:`agent.datasync`), so a stop that
  begins during a datasync pushes after it, from the record it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import NamedTuple

from agent.objectstore import S3ObjectStore
from agent.volume_transfer import VolumeStore, VolumeTransfer, describe
from agent.workspace.progress import ProgressCallback
from common import wire

log = logging.getLogger(__name__)

StoreFactory = Callable[[wire.VolumeAssignment], VolumeStore]


def s3_store(assigned: wire.VolumeAssignment) -> VolumeStore:
    return S3ObjectStore(
        assigned.endpoint, assigned.region, assigned.access_key, assigned.secret_key
    )


class VolumeSyncError(Exception):
    """A volume's pull or push failed; the message names the volume."""


class Mount(NamedTuple):
    """A bind mount for the container: host dir → mount path (a plain tuple to the runtime)."""

    source: str
    target: str
    read_only: bool


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
        self._locks: dict[str, asyncio.Lock] = {}
        #: Told of every volume pulled or pushed: ``(kind, seconds, bytes moved)``, kind
        #: ``volume-pull`` or ``volume-push`` (the agent's sync metrics).
        self.on_sync: Callable[[str, float, int], None] = lambda kind, seconds, moved: None

    # ------------------------------------------------------------ paths

    def notebook_dir(self, notebook: str) -> str:
        return os.path.join(self.volumes_dir, notebook)

    def volume_dir(self, notebook: str, index: int) -> str:
        return os.path.join(self.notebook_dir(notebook), str(index))

    def _manifest_path(self, notebook: str, index: int) -> str:
        return self.volume_dir(notebook, index) + ".pulled.json"

    def record_path(self, notebook: str, index: int) -> str:
        """Volume ``index``'s pull record (what was pulled or pushed: size, mtime, ETag)."""
        return self._manifest_path(notebook, index)

    def staging_dir(self, notebook: str, index: int) -> str:
        """Where a datasync pull downloads before putting files in place (the agent's own)."""
        return self.volume_dir(notebook, index) + ".datasync"

    def lock(self, notebook: str) -> asyncio.Lock:
        """Held by every sync of ``notebook``'s volumes while it runs."""
        return self._locks.setdefault(notebook, asyncio.Lock())

    def store_for(self, assigned: wire.VolumeAssignment) -> VolumeStore:
        """The (cached) store of the volume's datastore."""
        return self._store(assigned)

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

    def _transfer(
        self,
        notebook: str,
        index: int,
        assigned: wire.VolumeAssignment,
        progress: ProgressCallback | None,
    ) -> VolumeTransfer:
        return VolumeTransfer(
            notebook,
            index,
            assigned.volume,
            self._store(assigned),
            self.concurrency,
            self.clock,
            progress,
        )

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
        async with self.lock(notebook):
            await self._pull_all(notebook, volumes, progress)

    async def _pull_all(
        self,
        notebook: str,
        volumes: list[wire.VolumeAssignment],
        progress: ProgressCallback | None,
    ) -> None:
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
        target = self.volume_dir(notebook, index)
        if os.path.isdir(target):
            log.info(
                "notebook=%s volume %d (%s) host dir exists, using it as is",
                notebook,
                index,
                describe(assigned.volume),
            )
            return
        staging = target + ".pulling"
        transfer = self._transfer(notebook, index, assigned, progress)
        started = time.monotonic()
        moved = await transfer.pull(staging, self._manifest_path(notebook, index))
        os.rename(staging, target)
        self.on_sync("volume-pull", time.monotonic() - started, moved)

    # ------------------------------------------------------------ push

    async def push(
        self,
        notebook: str,
        volumes: list[wire.VolumeAssignment],
        progress: ProgressCallback | None = None,
    ) -> None:
        """Push every volume (all are tried); raises the first failure after trying all."""
        async with self.lock(notebook):
            await self._push_all(notebook, volumes, progress)

    async def _push_all(
        self,
        notebook: str,
        volumes: list[wire.VolumeAssignment],
        progress: ProgressCallback | None,
    ) -> None:
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
        directory = self.volume_dir(notebook, index)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return
        if assigned.volume.permission == "ro":
            self._remove_volume(notebook, index)
            return
        transfer = self._transfer(notebook, index, assigned, progress)
        started = time.monotonic()
        moved = await transfer.push(directory, self._manifest_path(notebook, index))
        self.on_sync("volume-push", time.monotonic() - started, moved)
        self._remove_volume(notebook, index)

    # ------------------------------------------------------------ host dirs

    def _remove_volume(self, notebook: str, index: int) -> None:
        shutil.rmtree(self.volume_dir(notebook, index), ignore_errors=True)
        shutil.rmtree(self.staging_dir(notebook, index), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._manifest_path(notebook, index))

    def _drop_notebook_dir_if_empty(self, notebook: str) -> None:
        try:
            os.rmdir(self.notebook_dir(notebook))
        except OSError:
            pass  # absent, or still holding a kept volume

    async def remove(self, notebook: str) -> None:
        """Drop every volume host dir of ``notebook`` without pushing (delete)."""
        async with self.lock(notebook):
            await asyncio.to_thread(shutil.rmtree, self.notebook_dir(notebook), True)
        lock = self._locks.get(notebook)
        if lock is not None and not lock.locked():
            del self._locks[notebook]
