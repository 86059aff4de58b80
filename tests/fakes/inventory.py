"""FakeInventory (GpuInventory) and FakeClock."""

from __future__ import annotations

from agent.gpus import GpuSnapshot
from common.wire import GpuInfo


class FakeInventory:
    def __init__(self, models: list[str] | None = None, note: str = "") -> None:
        self.gpus = [
            GpuInfo(uuid=f"GPU-fake-{i}", index=i, model=model, memory_total_mb=81920)
            for i, model in enumerate(models or [])
        ]
        self.note = note if not self.gpus else ""
        #: How many times the GPUs were read.
        self.snapshots = 0

    async def snapshot(self) -> GpuSnapshot:
        self.snapshots += 1
        return GpuSnapshot(gpus=list(self.gpus), note=self.note)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
