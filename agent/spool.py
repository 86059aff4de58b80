"""One small file the agent replaces atomically: state that must outlive the agent process.

:meth:`Spool.write` puts the new content in ``<path>.tmp``, fsyncs it, renames it over
``<path>`` and fsyncs the directory, so after a crash or power loss at any point the file holds
the old content or the new one, never a mix, and a finished write is on disk. A ``.tmp`` left by
a crash is never read (the next write replaces it). Writes run one at a time, in the order they
were asked for, on one thread of their own: the event loop never waits for a disk, and a
caller cancelled mid-write cannot let an older content land after a newer one.

:meth:`quarantine` moves a file nobody can read aside as ``<path>.corrupt-<time>``, so its
owner can start afresh and an operator can still look at it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp_path = path + ".tmp"
        self._writer: ThreadPoolExecutor | None = None

    def read(self) -> bytes | None:
        """The last content written, or ``None`` when nothing was ever written. Raises
        ``OSError`` when the file exists but cannot be read."""
        try:
            with open(self.path, "rb") as source:
                return source.read()
        except FileNotFoundError:
            return None

    def quarantine(self) -> str | None:
        """Move the file aside; where it went, or ``None`` if that failed too."""
        target = f"{self.path}.corrupt-{int(time.time())}"
        try:
            os.replace(self.path, target)
        except OSError as exc:
            log.error(
                "spool=%s could not be moved aside (%s); the next write replaces it", self.path, exc
            )
            return None
        return target

    def write_now(self, data: bytes) -> None:
        """Replace the content, durably, in the calling thread."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        with open(self.tmp_path, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(self.tmp_path, self.path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power loss
        finally:
            os.close(fd)

    async def write(self, data: bytes) -> None:
        """:meth:`write_now` on the spool's own thread; writes land in the order asked."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        await asyncio.get_running_loop().run_in_executor(self._writer, self.write_now, data)

    def close(self) -> None:
        """Wait for writes already asked for, then let the thread go."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
