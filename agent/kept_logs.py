"""The last output of notebooks whose containers are gone.

A container is removed once it exits or is stopped, which would take with it the one thing a
user needs after a crash: what the notebook printed before it died. The agent saves the tail of
the output here just before removing the container and serves it when the container is gone,
until the notebook is started again or deleted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from agent.runtime import ContainerRuntime, NoSuchContainer

log = logging.getLogger(__name__)

#: Lines kept per notebook: enough for a traceback and its context, small on disk.
KEPT_LINES = 2000


class KeptLogs:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, notebook: str) -> Path:
        return self.directory / f"{notebook}.log"

    async def keep(self, runtime: ContainerRuntime, notebook: str) -> None:
        """Save the container's last output; a missing container or a read error is logged and
        ignored, since losing the logs must never block stopping the notebook."""
        try:
            text = await runtime.logs(notebook, KEPT_LINES)
        except NoSuchContainer:
            return
        except Exception as exc:
            log.warning("notebook=%s could not save its last output: %s", notebook, exc)
            return
        await asyncio.to_thread(self._write, notebook, text)

    def _write(self, notebook: str, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._path(notebook).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self._path(notebook))

    def read(self, notebook: str, tail: int) -> str | None:
        try:
            lines = self._path(notebook).read_text().splitlines(keepends=True)
        except FileNotFoundError:
            return None
        return "".join(lines[-tail:])

    def forget(self, notebook: str) -> None:
        self._path(notebook).unlink(missing_ok=True)
