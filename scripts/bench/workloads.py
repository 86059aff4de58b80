"""Workloads for scripts/bench-sync: generate them, change 1% of them, compare trees.

Everything here is deterministic for a given seed so that every tool, every run and every
machine sees the same bytes, and the unit tests can check that without timing anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

MIB = 1024 * 1024

#: Bumped whenever the generator's output changes, so a cached workload is regenerated.
GENERATOR_VERSION = 1

_WORDS = (
    "import numpy as np def return self if else for in range while with open as yield "
    "class lambda None True False try except raise assert print loss model optimizer "
    "batch epoch tensor shape dtype float32 device cuda train eval step grad config "
    "data loader path json csv value key index column row mean std min max sum len "
    "the a of to and is that it on was for notebook workspace result figure plot"
).split()
_TEXT_SUFFIXES = (".py", ".md", ".csv", ".json", ".ipynb", ".txt", ".yaml")
_BINARY_SUFFIXES = (".npy", ".pkl", ".png", ".bin", ".parquet")


def generate_workspace(
    root: Path,
    *,
    seed: int,
    n_files: int = 2000,
    min_size: int = 1024,
    max_size: int = 60 * 1024,
    big_size: int = 200 * MIB,
    text_share: float = 0.6,
) -> dict[str, int]:
    """Write workload (a) into ``root`` (which must be empty or absent).

    ``n_files`` small files of ``min_size``..``max_size`` bytes spread over a two-level tree,
    ``text_share`` of them compressible text or code and the rest random bytes, plus
    ``big/weights-random.bin`` (random, ``big_size`` bytes) and ``big/checkpoint.safetensors``
    (``big_size`` bytes shaped like a bf16-trained checkpoint: a JSON header, tensors whose
    low mantissa bytes are zero, optimizer moments that are still zero). Same seed, same
    bytes. Returns ``{"files": N, "bytes": B}``.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    n_dirs = max(1, n_files // 50)
    for i in range(n_files):
        top = rng.randrange(max(1, n_dirs // 4))
        sub = rng.randrange(4)
        size = rng.randint(min_size, max_size)
        is_text = rng.random() < text_share
        suffixes = _TEXT_SUFFIXES if is_text else _BINARY_SUFFIXES
        rel = Path(f"project-{top:02d}", f"part-{sub}", f"file-{i:05d}{rng.choice(suffixes)}")
        data = _text(rng, size) if is_text else rng.randbytes(size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += size
    big = root / "big"
    big.mkdir(exist_ok=True)
    _write_random(big / "weights-random.bin", rng, big_size)
    _write_checkpoint(big / "checkpoint.safetensors", rng, big_size)
    return {"files": n_files + 2, "bytes": total + 2 * big_size}


def _text(rng: random.Random, size: int) -> bytes:
    words: list[str] = []
    length = 0
    while length <= size:
        line = " ".join(rng.choices(_WORDS, k=rng.randint(3, 14)))
        indent = "    " * rng.randrange(3)
        words.append(indent + line)
        length += len(line) + len(indent) + 1
    return "\n".join(words).encode()[:size]


def _write_random(path: Path, rng: random.Random, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(left, 8 * MIB)
            out.write(rng.randbytes(n))
            left -= n


# Sign + high exponent byte of small-magnitude floats: weights cluster around |x| < 1.
_EXPONENT_BYTES = bytes([0x3B, 0x3C, 0x3D, 0x3E, 0xBB, 0xBC, 0xBD, 0xBE])
_EXPONENT_TABLE = bytes(_EXPONENT_BYTES[i % len(_EXPONENT_BYTES)] for i in range(256))


def _write_checkpoint(path: Path, rng: random.Random, size: int) -> None:
    """A safetensors-shaped file: 8-byte header length, a JSON header padded to 64 KiB with
    spaces (as safetensors pads), then float32 tensors of 4 MiB (the last one shorter)."""
    header_bytes = 64 * 1024
    data_bytes = size - header_bytes
    if data_bytes < 0 or data_bytes % 4:
        raise ValueError(f"checkpoint size {size}: need >= 64 KiB and a multiple of 4")
    lengths = [4 * MIB] * (data_bytes // (4 * MIB))
    if data_bytes % (4 * MIB):
        lengths.append(data_bytes % (4 * MIB))
    header: dict[str, object] = {"__metadata__": {"format": "pt", "step": "12000"}}
    kinds = []
    offset = 0
    for i, length in enumerate(lengths):
        # One tensor in four is an optimizer moment still at zero, as in a fresh Adam state.
        kind = "zeros" if rng.random() < 0.25 else "weights"
        name = f"layers.{i // 4}.{'exp_avg' if kind == 'zeros' else 'weight'}.{i % 4}"
        header[name] = {
            "dtype": "F32",
            "shape": [length // 4],
            "data_offsets": [offset, offset + length],
        }
        kinds.append(kind)
        offset += length
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > header_bytes - 8:
        raise ValueError(f"checkpoint header of {len(head)} bytes does not fit in 64 KiB")
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", header_bytes - 8))
        out.write(head.ljust(header_bytes - 8, b" "))
        for kind, length in zip(kinds, lengths, strict=True):
            if kind == "zeros":
                out.write(bytes(length))
                continue
            # Little-endian float32 truncated from bf16: bytes 0-1 zero, byte 2 random
            # (mantissa), byte 3 sign and exponent from a narrow range.
            buf = bytearray(length)
            quarter = length // 4
            buf[2::4] = rng.randbytes(quarter)
            buf[3::4] = rng.randbytes(quarter).translate(_EXPONENT_TABLE)
            out.write(buf)


def regular_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root`` (links not followed), sorted."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                found.append(Path(full).relative_to(root).as_posix())
    return sorted(found)


def choose_changed(paths: Iterable[str], *, seed: int, fraction: float = 0.01) -> list[str]:
    """The files the "1% changed" step edits: ``ceil(fraction * N)`` of ``paths``, chosen
    by ``seed`` alone (independent of the order ``paths`` came in), returned sorted."""
    ordered = sorted(paths)
    if not ordered:
        return []
    count = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return sorted(random.Random(seed).sample(ordered, count))


def change_file(path: Path, rng: random.Random, window: int = 64) -> None:
    """Overwrite up to ``window`` bytes at an ``rng``-chosen offset with their complement:
    the content changes, the size does not, the mtime becomes now (as an editor's save)."""
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            handle.write(b"\n")  # an empty file can only change by growing
            return
        length = min(window, size)
        offset = rng.randrange(size - length + 1)
        handle.seek(offset)
        old = handle.read(length)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in old))


def change_one_percent(root: Path, *, seed: int, fraction: float = 0.01) -> list[str]:
    """Apply :func:`change_file` to :func:`choose_changed`'s pick; returns the paths."""
    chosen = choose_changed(regular_files(root), seed=seed, fraction=fraction)
    rng = random.Random(seed + 1)
    for rel in chosen:
        change_file(root / rel, rng)
    return chosen


def tree_digest(root: Path, *, include_links: bool = True) -> dict[str, str]:
    """``{relative path: "file:<sha256>" | "link:<target>"}`` for every file and symlink under
    ``root`` (never following links). Directories are left out: S3 tools keep no empty ones."""
    digest: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(root).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                if include_links:
                    digest[rel] = "link:" + os.readlink(full)
            elif stat.S_ISREG(mode):
                with open(full, "rb") as handle:
                    digest[rel] = "file:" + hashlib.file_digest(handle, "sha256").hexdigest()
    return digest


def compare_digests(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Human-readable differences between two :func:`tree_digest` results, sorted; empty
    when the trees hold the same files with the same bytes."""
    problems = []
    for rel in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(rel), actual.get(rel)
        if want == got:
            continue
        if got is None:
            problems.append(f"missing: {rel}")
        elif want is None:
            problems.append(f"unexpected: {rel}")
        else:
            problems.append(f"differs: {rel} ({want[:20]}… != {got[:20]}…)")
    return problems


def tree_size(root: Path) -> dict[str, int]:
    """``{"files": N, "bytes": B, "links": L}`` for the regular files and links under root."""
    files = links = total = 0
    for dirpath, dirs, names in os.walk(root):
        for name in names + dirs:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                links += 1
            elif stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
    return {"files": files, "bytes": total, "links": links}
