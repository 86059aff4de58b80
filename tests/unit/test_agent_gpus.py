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

from tests.support.nvml import build_fake_nvml, nvml_env

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
