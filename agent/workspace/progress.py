"""Throttled progress reports: ``Callable[[common.wire.Progress], None]`` at most a few a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common.wire import Progress

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
INTERVAL_S = 0.25


class Reporter:
    def __init__(self, callback: ProgressCallback | None, phase: str, detail: str = "") -> None:
        self.callback = callback
        self.phase = phase
        self.detail = detail
        self.files_done = self.files_total = self.bytes_done = self.bytes_total = 0
        self._last = 0.0

    def total(self, files: int, nbytes: int) -> None:
        self.files_total, self.bytes_total = files, nbytes
        self.emit(force=True)

    def add(self, files: int, nbytes: int) -> None:
        self.files_done += files
        self.bytes_done += nbytes
        self.emit()

    def emit(self, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last < INTERVAL_S:
            return
        self._last = now
        try:
            self.callback(
                Progress(
                    phase=self.phase,  # type: ignore[arg-type]
                    files_done=self.files_done,
                    files_total=self.files_total,
                    bytes_done=self.bytes_done,
                    bytes_total=self.bytes_total,
                    at=time.time(),
                    detail=self.detail,
                )
            )
        except Exception:  # a broken observer must not fail the sync
            log.exception("progress callback failed")
