"""NvmlInventory through nvidia-ml-py's real calls against the fake libnvidia-ml.so.1.

pynvml loads the library once per process, so each case runs in a fresh interpreter with its
own LD_LIBRARY_PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.nvml import GpuFigures, build_fake_nvml, nvml_env, write_gpu_state

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import asyncio, json
from agent.gpus import NvmlInventory
snap = asyncio.run(NvmlInventory().snapshot())
print(json.dumps({"gpus": [[g.uuid, g.index, g.model, g.memory_total_mb, g.utilization_pct]
                           for g in snap.gpus], "note": snap.note, "driver": snap.driver_version}))
"""


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("nvml")
    build_fake_nvml(directory)
    return directory


def snapshot(env: dict[str, str]) -> dict:
    env = {**env, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_inventory_reads_fake_gpus(lib_dir: Path) -> None:
    env = nvml_env(
        lib_dir,
        [("GPU-11111111-aaaa", "NVIDIA H100 80GB HBM3", 81920), ("GPU-2222", "NVIDIA A10", 24576)],
    )
    got = snapshot(env)
    assert got["gpus"] == [
        ["GPU-11111111-aaaa", 0, "NVIDIA H100 80GB HBM3", 81920, 0],
        ["GPU-2222", 1, "NVIDIA A10", 24576, 0],
    ]
    assert got["note"] == ""
    assert got["driver"] == "550.54.15-fake"


def test_utilization_is_reported(lib_dir: Path) -> None:
    env = nvml_env(lib_dir, [])
    env["NBFLEET_FAKE_GPUS"] = "GPU-u:NVIDIA L4:23034:42"
    assert snapshot(env)["gpus"] == [["GPU-u", 0, "NVIDIA L4", 23034, 42]]


def test_no_gpus_when_library_is_absent(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(tmp_path)  # an empty dir: no libnvidia-ml.so.1 anywhere
    got = snapshot(env)
    assert got["gpus"] == []
    assert got["note"] == "NVML: NVML Shared Library Not Found"


def test_no_gpus_when_driver_is_not_loaded(lib_dir: Path) -> None:
    env = nvml_env(lib_dir, [("GPU-x", "NVIDIA A10", 24576)])
    env["NBFLEET_FAKE_NVML_INIT_ERROR"] = "9"
    got = snapshot(env)
    assert got["gpus"] == []
    assert got["note"] == "NVML: Driver Not Loaded"


def test_zero_gpus_has_a_note(lib_dir: Path) -> None:
    got = snapshot(nvml_env(lib_dir, []))
    assert got == {"gpus": [], "note": "NVML: no GPUs found", "driver": "550.54.15-fake"}


LIVE_PROBE = """
import asyncio, json, sys
from agent.gpus import NvmlInventory
for _ in sys.stdin:
    snap = asyncio.run(NvmlInventory().snapshot())
    print(json.dumps([[g.uuid, g.utilization_pct, g.memory_used_mb, g.power_w * 1000]
                      for g in snap.gpus]), flush=True)
"""


def test_a_test_changes_what_the_gpus_do_while_the_process_runs(
    lib_dir: Path, tmp_path: Path
) -> None:
    """The figures come from the state file at every query: one process sees them change."""
    state = tmp_path / "gpu-state"
    env = nvml_env(lib_dir, [("GPU-a", "NVIDIA H100", 81920), ("GPU-b", "NVIDIA H100", 81920)])
    env.update(NBFLEET_FAKE_GPU_STATE=str(state), PYTHONPATH=str(ROOT))
    probe = subprocess.Popen(
        [sys.executable, "-c", LIVE_PROBE],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert probe.stdin is not None and probe.stdout is not None

    def read() -> list[list[object]]:
        probe.stdin.write("read\n")
        probe.stdin.flush()
        return json.loads(probe.stdout.readline())

    try:
        # No file yet: the defaults.
        assert read() == [["GPU-a", 0, 512, 60000], ["GPU-b", 0, 512, 60000]]
        write_gpu_state(state, {"GPU-b": GpuFigures(87, 31948, 312000)})
        assert read() == [["GPU-a", 0, 512, 60000], ["GPU-b", 87, 31948, 312000]]
        write_gpu_state(state, {"GPU-a": GpuFigures(3, 1024, 75000), "GPU-b": GpuFigures()})
        assert read() == [["GPU-a", 3, 1024, 75000], ["GPU-b", 0, 512, 60000]]
    finally:
        probe.stdin.close()
        assert probe.wait(timeout=30) == 0
