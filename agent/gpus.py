"""GPU inventory through NVML.

Contract of :class:`GpuInventory`: ``snapshot()`` never raises. A host without a driver, without
``libnvidia-ml.so.1`` or with a broken NVML reports zero GPUs and a ``note`` that says why, so the
agent still registers (as a CPU host) and an operator can read the reason in ``/v1/admin/hosts``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.wire import GpuInfo

log = logging.getLogger(__name__)


@dataclass
class GpuSnapshot:
    gpus: list[GpuInfo] = field(default_factory=list)
    #: Why there are no GPUs (empty when NVML answered).
    note: str = ""
    driver_version: str = ""


class GpuInventory(Protocol):
    async def snapshot(self) -> GpuSnapshot:
        """The GPUs on this host now, by index. Never raises."""
        ...


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlInventory:
    """Reads GPUs through nvidia-ml-py. NVML calls block, so they run in a worker thread."""

    async def snapshot(self) -> GpuSnapshot:
        try:
            return await asyncio.to_thread(self._read)
        except Exception as exc:  # the contract is "never raises"; say why in the note
            log.warning("gpus: NVML read failed, reporting no GPUs: %r", exc)
            return GpuSnapshot(note=f"NVML: unexpected error: {exc!r}")

    def _read(self) -> GpuSnapshot:
        try:
            import pynvml
        except ImportError as exc:
            return GpuSnapshot(note=f"NVML: nvidia-ml-py is not installed ({exc})")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return GpuSnapshot(note=f"NVML: {exc}")
        try:
            driver = ""
            try:
                driver = _text(pynvml.nvmlSystemGetDriverVersion())
            except pynvml.NVMLError:
                pass
            gpus: list[GpuInfo] = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    utilization = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except pynvml.NVMLError:
                    # Some boards (and MIG) do not report utilization; it is informational only.
                    utilization = 0
                try:
                    power: float | None = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
                except pynvml.NVMLError:
                    power = None  # not every board reports it
                gpus.append(
                    GpuInfo(
                        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                        index=index,
                        model=_text(pynvml.nvmlDeviceGetName(handle)),
                        memory_total_mb=int(memory.total) // (1024 * 1024),
                        memory_used_mb=int(memory.used) // (1024 * 1024),
                        utilization_pct=max(0, min(100, utilization)),
                        power_w=power,
                    )
                )
            note = "" if gpus else "NVML: no GPUs found"
            return GpuSnapshot(gpus=gpus, note=note, driver_version=driver)
        except pynvml.NVMLError as exc:
            return GpuSnapshot(note=f"NVML: {exc}")
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass
