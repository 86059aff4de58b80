"""A notebook's directories on this host and their sync with object storage.

``workspaces_dir/<id>`` is ``/workspace``; ``scratch_dir/<id>`` is ``/data`` (never synced).
Rules (design.md, "Lifecycle"): an existing host workspace dir is used as is (it only survives a
failed push, so it is never older than object storage); otherwise the workspace is restored.
A notebook that has started before (``initialized``) must find the marker
:data:`MARKER` in its workspace, or it would silently start empty; a first start creates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil

from agent.objectstore import ObjectStore
from agent.workspace import mirror

log = logging.getLogger(__name__)

MARKER = ".workspace.initialized"


class MarkerMissing(Exception):
    pass


class HostWorkspaces:
    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        workspaces_dir: str,
        scratch_dir: str,
        *,
        concurrency: int = 16,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.workspaces_dir = workspaces_dir
        self.scratch_dir = scratch_dir
        self.concurrency = concurrency
        self._bucket_ready = False

    def workspace_dir(self, notebook: str) -> str:
        return os.path.join(self.workspaces_dir, notebook)

    def scratch(self, notebook: str) -> str:
        return os.path.join(self.scratch_dir, notebook)

    def has_workspace(self, notebook: str) -> bool:
        return os.path.isdir(self.workspace_dir(notebook))

    async def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            await self.store.ensure_bucket(self.bucket)
            self._bucket_ready = True

    async def prepare(self, notebook: str, initialized: bool) -> None:
        """Make ``/workspace`` and ``/data`` ready. Raises :class:`MarkerMissing` (after removing
        the just-restored dir, which holds nothing new) or the store's error."""
        directory = self.workspace_dir(notebook)
        restored = False
        if not os.path.isdir(directory):
            await self._ensure_bucket()
            result = await mirror.restore(
                self.store,
                self.bucket,
                mirror.workspace_prefix(notebook),
                directory,
                concurrency=self.concurrency,
            )
            restored = True
            log.info(
                "notebook=%s workspace restored: %d files, %d symlinks, %d bytes, %d refused",
                notebook,
                result.files,
                result.symlinks,
                result.bytes,
                len(result.refused),
            )
        marker = os.path.join(directory, MARKER)
        if not os.path.lexists(marker):
            if initialized:
                if restored:
                    await asyncio.to_thread(shutil.rmtree, directory, True)
                raise MarkerMissing(
                    f"workspace marker {MARKER} is missing from the "
                    f"{'restored' if restored else 'host'} workspace although the notebook has "
                    "started before; refusing to start it with an empty workspace"
                )
            await asyncio.to_thread(_touch, marker)
        await asyncio.to_thread(os.makedirs, self.scratch(notebook), exist_ok=True)

    async def push(self, notebook: str) -> mirror.PushResult | None:
        """Push the host workspace dir; ``None`` when there is none (nothing to save)."""
        directory = self.workspace_dir(notebook)
        if not os.path.isdir(directory):
            return None
        await self._ensure_bucket()
        result = await mirror.push(
            self.store,
            self.bucket,
            mirror.workspace_prefix(notebook),
            directory,
            concurrency=self.concurrency,
        )
        log.info(
            "notebook=%s workspace pushed: %d uploaded, %d unchanged, %d deleted, %d bytes",
            notebook,
            result.uploaded,
            result.skipped,
            result.deleted,
            result.bytes,
        )
        return result

    async def remove_scratch(self, notebook: str) -> None:
        await asyncio.to_thread(_rmtree, self.scratch(notebook))

    async def remove_workspace_dir(self, notebook: str) -> None:
        directory = self.workspace_dir(notebook)
        await asyncio.to_thread(_rmtree, directory)
        await asyncio.to_thread(_rmtree, directory + mirror.RESTORING_SUFFIX)

    async def delete_remote(self, notebook: str) -> int:
        await self._ensure_bucket()
        return await mirror.delete_prefix(
            self.store, self.bucket, mirror.workspace_prefix(notebook)
        )


def _touch(path: str) -> None:
    with open(path, "a"):
        pass


def _rmtree(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
