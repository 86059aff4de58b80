"""Disk figures the agent reports with its heartbeats.

* :func:`filesystem_space`: free and total bytes of the filesystem holding ``workspaces_dir``
  (``statvfs``); the scheduler places no new notebooks on a host whose disk is nearly full.
* :func:`allocated_bytes`: what one workspace host dir takes on disk: the allocated blocks
  (``st_blocks * 512``, so sparse files count what they really use) of everything under it,
  read with ``lstat`` (a symlink counts itself, never its target), hard links once, never
  leaving the directory's filesystem.
* :class:`WorkspaceMeter`: the latest figure of each running notebook. A walk of a big workspace
  costs real I/O, so :meth:`WorkspaceMeter.measure` runs in a worker thread, is called by its own
  loop no more often than ``disk_usage_interval_s``, and its figures are sent until a heartbeat
  that carried them is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping

from agent import userfs
from common.wire import DiskSpace, WorkspaceUse

log = logging.getLogger(__name__)

#: ``st_blocks`` counts 512-byte units whatever the filesystem's block size.
BLOCK = 512


def filesystem_space(path: str) -> DiskSpace:
    """Free (for unprivileged writers, as notebooks are) and total bytes under ``path``."""
    st = os.statvfs(path)
    return DiskSpace(free_bytes=st.f_bavail * st.f_frsize, total_bytes=st.f_blocks * st.f_frsize)


class Cancelled(Exception):
    pass


def allocated_bytes(root: str, cancelled: Callable[[], bool] = lambda: False) -> int:
    """Bytes allocated to ``root`` and everything under it (see the module docstring). Entries
    that vanish during the walk are skipped; ``cancelled`` is asked once per directory. The
    walk goes by directory descriptors (:class:`agent.userfs.DirFds`), so a directory the user
    swaps for a link mid-walk is never entered: no host directory is ever measured."""
    root_fd = userfs.open_root(root)
    try:
        top = os.fstat(root_fd)
        device = top.st_dev
        total = top.st_blocks * BLOCK
        linked: set[int] = set()
        pending = [""]
        with userfs.DirFds(root_fd) as dirs:
            while pending:
                if cancelled():
                    raise Cancelled(root)
                rel = pending.pop()
                try:
                    fd = dirs.dir_fd(rel)
                    listing = [(e.name, e.stat(follow_symlinks=False)) for e in os.scandir(fd)]
                except (userfs.Skipped, FileNotFoundError, NotADirectoryError):
                    continue
                for name, st in listing:
                    if st.st_dev != device:
                        continue  # a mount inside the workspace is not the workspace's disk
                    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                        if st.st_ino in linked:
                            continue
                        linked.add(st.st_ino)
                    total += st.st_blocks * BLOCK
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(f"{rel}/{name}" if rel else name)
        return total
    finally:
        os.close(root_fd)


class WorkspaceMeter:
    """Latest disk use of each running notebook's workspace, and which figures are unsent."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._latest: dict[str, WorkspaceUse] = {}
        self._unsent: set[str] = set()
        self._closed = threading.Event()

    async def measure(self, dirs: Mapping[str, str]) -> None:
        """Measure ``dirs`` (notebook → host dir) one after the other in a worker thread, and
        forget notebooks not among them. A dir that cannot be read keeps its last figure."""
        for notebook in set(self._latest) - set(dirs):
            del self._latest[notebook]
            self._unsent.discard(notebook)
        for notebook, directory in sorted(dirs.items()):
            if self._closed.is_set():
                return
            try:
                used = await asyncio.to_thread(allocated_bytes, directory, self._closed.is_set)
            except Cancelled:
                return
            except FileNotFoundError:
                continue  # not there yet, or gone: nothing to report
            except OSError as exc:
                log.warning(
                    "notebook=%s workspace disk use not measured (%s); tried again in the "
                    "next round",
                    notebook,
                    exc,
                )
                continue
            self._latest[notebook] = WorkspaceUse(
                notebook=notebook, used_bytes=used, measured_at=self._clock()
            )
            self._unsent.add(notebook)

    def get(self, notebook: str) -> WorkspaceUse | None:
        return self._latest.get(notebook)

    def pending(self) -> list[WorkspaceUse]:
        """Figures measured since the last :meth:`acknowledge` that covered them."""
        return [self._latest[n] for n in sorted(self._unsent) if n in self._latest]

    def acknowledge(self, sent: list[WorkspaceUse]) -> None:
        """``sent`` reached the scheduler; a figure measured after it stays unsent."""
        for item in sent:
            if self._latest.get(item.notebook) == item:
                self._unsent.discard(item.notebook)

    def close(self) -> None:
        """Stop a walk in progress at its next directory (agent shutdown)."""
        self._closed.set()
