"""Build the fake NVML library (``fake_nvml.c``) for tests that exercise nvidia-ml-py for real.

API:

``build_fake_nvml(dest_dir: str | Path) -> Path``
    Compile ``libnvidia-ml.so.1`` into ``dest_dir`` with gcc (raises ``RuntimeError`` with gcc's
    output when that fails) and return the library path. Put ``dest_dir`` on ``LD_LIBRARY_PATH``
    of a *new process*: pynvml loads the library once per process.

``fake_gpus_env(gpus: list[tuple[str, str, int]]) -> str``
    The value for ``NBFLEET_FAKE_GPUS`` from ``(uuid, model, memory_mib)`` tuples.

``nvml_env(lib_dir, gpus, base=None) -> dict[str, str]``
    A copy of ``base`` (default ``os.environ``) with ``LD_LIBRARY_PATH`` and ``NBFLEET_FAKE_GPUS``
    set, ready for ``subprocess`` / an agent process.

``write_gpu_state(path, figures)``
    Set what GPUs are doing now, for a process whose ``NBFLEET_FAKE_GPU_STATE`` is ``path``:
    ``figures`` maps a GPU's uuid to ``GpuFigures``; written atomically (a rename), read again
    by the fake at every utilization, memory and power query.

The fake reads ``NBFLEET_FAKE_GPUS`` ("uuid:name:MiB[:util%];...") at ``nvmlInit`` and fails
init with code N when ``NBFLEET_FAKE_NVML_INIT_ERROR=N`` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"


def build_fake_nvml(dest_dir: str | Path) -> Path:
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("building the fake NVML library needs gcc (or cc) on PATH")
    target = dest / LIBRARY_NAME
    result = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-o", str(target), str(SOURCE)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gcc failed to build {target}:\n{result.stdout}{result.stderr}")
    return target


@dataclass(frozen=True)
class GpuFigures:
    utilization_pct: int = 0
    memory_used_mib: int = 512
    power_mw: int = 60_000


def write_gpu_state(path: str | Path, figures: dict[str, GpuFigures]) -> None:
    path = Path(path)
    lines = "".join(
        f"{uuid} {f.utilization_pct} {f.memory_used_mib} {f.power_mw}\n"
        for uuid, f in figures.items()
    )
    partial = path.with_name(path.name + ".partial")
    partial.write_text(lines)
    partial.replace(path)


def fake_gpus_env(gpus: list[tuple[str, str, int]]) -> str:
    return ";".join(f"{uuid}:{model}:{memory_mib}" for uuid, model, memory_mib in gpus)


def nvml_env(
    lib_dir: str | Path,
    gpus: list[tuple[str, str, int]],
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    previous = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = str(lib_dir) + (os.pathsep + previous if previous else "")
    env["NBFLEET_FAKE_GPUS"] = fake_gpus_env(gpus)
    return env
