"""A hostile notebook user against the agent's pushes, on a real SeaweedFS.

While the workspace engine pushes ``/workspace`` (a checkpoint runs while the notebook is
RUNNING) and while an ``rw`` volume is pushed, another thread does what a user inside the
container can: swaps files and directories for symlinks to a host file outside the workspace
and for FIFOs, and back, as fast as it can. The host file is world-readable, so only the
agent's no-follow discipline keeps it out (the user-credential reads are a second layer, tested
in tests/unit/test_agent_userfs.py). What must hold: the host file's bytes never reach S3, in
any object, decompressed; every push finishes within a deadline (a FIFO never hangs one).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
import uuid
from pathlib import Path

import pytest
import zstandard

from agent.objectstore import S3ObjectStore
from agent.volumes import VolumeSync
from agent.workspace import engine
from agent.workspace import manifest as mf
from common import wire
from tests.support.s3server import S3Server

PUSHES = 50
DEADLINE_S = 60.0
USER = (1000, 1000)


@pytest.fixture
async def store(s3: S3Server):
    s = S3ObjectStore(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key)
    yield s
    await s.close()


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A host file and a host directory the user must never get: the directory holds files
    named like the workspace's, so a followed directory link would find something to read."""
    secret = b"HOST-SECRET-" + os.urandom(16).hex().encode()
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "shadow").write_bytes(secret * 64)
    os.chmod(outside / "shadow", 0o644)
    for name in ("a.txt", "b.txt", "c.bin", "model.bin"):
        (outside / name).write_bytes(secret * 32)
    return {"dir": outside, "file": outside / "shadow", "secret": secret}


def make_workspace(root: Path) -> list[str]:
    (root / "data" / "deep").mkdir(parents=True)
    names = []
    for i in range(12):
        rel = f"f{i}.txt" if i % 3 else f"data/f{i}.txt"
        (root / rel).write_bytes(os.urandom(2000 + i * 97))
        names.append(rel)
    for rel in ("data/a.txt", "data/deep/b.txt", "c.bin", "data/model.bin"):
        (root / rel).write_bytes(os.urandom(30_000))
        names.append(rel)
    return names


class Swapper(threading.Thread):
    """What a user inside the container does between two system calls of the agent."""

    def __init__(self, root: Path, files: list[str], host: dict[str, Path]) -> None:
        super().__init__(daemon=True)
        self.root, self.files, self.host = root, files, host
        self.stopping = threading.Event()
        self.swaps = 0
        self.rng = random.Random(7)

    def _swap_file(self, rel: str) -> None:
        path = self.root / rel
        aside = path.with_name(path.name + ".aside")
        tmp = path.with_name(path.name + ".new")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        try:
            if self.rng.random() < 0.5:
                os.symlink(self.host["file"], tmp)
            else:
                os.mkfifo(tmp)
            os.rename(tmp, path)
            self.swaps += 1
            os.sched_yield()
        finally:
            os.replace(aside, path)

    def _swap_dir(self, rel: str) -> None:
        path = self.root / rel
        aside = path.with_name(path.name + ".aside")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        try:
            os.symlink(self.host["dir"], path)
            self.swaps += 1
            os.sched_yield()
            os.unlink(path)
        finally:
            os.rename(aside, path)

    def run(self) -> None:
        dirs = ["data", "data/deep"]
        while not self.stopping.is_set():
            try:
                if self.rng.random() < 0.25:
                    self._swap_dir(self.rng.choice(dirs))
                else:
                    self._swap_file(self.rng.choice(self.files))
            except OSError:
                continue  # the other half of a swap raced this one: try again

    def stop(self) -> int:
        self.stopping.set()
        self.join(10)
        return self.swaps


def chown_all(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, *USER)


async def stored_bytes(store: S3ObjectStore, bucket: str, prefix: str) -> list[tuple[str, bytes]]:
    """Every object under ``prefix``, plus every blob of every pack and chunk decompressed."""
    found: list[tuple[str, bytes]] = []
    objects = {
        o.key: await store.get_bytes(bucket, o.key) for o in await store.list(bucket, prefix)
    }
    dctx = zstandard.ZstdDecompressor()
    for key, body in objects.items():
        found.append((key, body))
        if key.endswith(mf.IDX_SUFFIX):
            pack = objects.get(key[: -len(mf.IDX_SUFFIX)], b"")
            for cid, offset, length, raw, zstd in mf.decode_idx(body):
                blob = pack[offset : offset + length]
                data = dctx.decompress(blob, max_output_size=raw) if zstd else blob
                found.append((f"{key}:{cid}", data))
        elif "/chunks/" in key and body[:4] == b"\x28\xb5\x2f\xfd":
            found.append((key + ":decompressed", dctx.decompress(body, max_output_size=1 << 24)))
    return found


async def test_swapped_links_and_fifos_never_leak_a_host_file_nor_hang_a_push(
    store: S3ObjectStore, tmp_path: Path, host: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    bucket = f"race-{uuid.uuid4().hex[:10]}"
    await store.ensure_bucket(bucket)
    prefix = "nb-race/workspace/"

    # ---- the workspace, checkpointed while the user swaps
    ws = tmp_path / "ws"
    files = make_workspace(ws)
    chown_all(ws)
    swapper = Swapper(ws, files, host)
    swapper.start()
    skipped = 0
    try:
        for i in range(PUSHES):
            # a small edit each time (at the top: the swapper moves the directories), so
            # every push reads and writes something
            (ws / f"edit{i % 3}.txt").write_bytes(os.urandom(500))
            result = await asyncio.wait_for(
                engine.push(
                    store,
                    bucket,
                    prefix,
                    str(ws),
                    index_dir=str(tmp_path / "idx"),
                    kind="checkpoint",
                ),
                DEADLINE_S,
            )
            skipped += len(result.skipped)
    finally:
        workspace_swaps = swapper.stop()
    assert workspace_swaps >= PUSHES

    # ---- an rw volume, pushed while the user swaps (pushed dirs are removed: made anew)
    volume_bucket = f"race-vol-{uuid.uuid4().hex[:10]}"
    await store.ensure_bucket(volume_bucket)
    assigned = wire.VolumeAssignment(
        volume=wire.Volume(volume_bucket, "lab", "/mnt/out", "out", "rw"),
        endpoint=store._endpoint or "",
        region="us-east-1",
        access_key=store._access_key or "",
        secret_key=store._secret_key or "",
    )
    sync = VolumeSync(str(tmp_path / "volumes"))
    volume_swaps = 0
    try:
        for i in range(PUSHES):
            vol = Path(sync.volume_dir("nb", 0))
            shutil.rmtree(vol, ignore_errors=True)
            vol_files = make_workspace(vol)
            (vol / f"run{i}.txt").write_bytes(os.urandom(100))
            chown_all(vol)
            swapper = Swapper(vol, vol_files, host)
            swapper.start()
            try:
                await asyncio.wait_for(sync.push("nb", [assigned]), DEADLINE_S)
            finally:
                volume_swaps += swapper.stop()
    finally:
        await sync.close()
    assert volume_swaps >= PUSHES

    # ---- nothing of the host's reached S3, in any form
    secret = host["secret"]
    for where, (bkt, pfx) in {"workspace": (bucket, prefix), "volume": (volume_bucket, "")}.items():
        stored = await stored_bytes(store, bkt, pfx)
        assert stored, where
        leaked = [key for key, data in stored if secret in data]
        assert leaked == [], f"host file bytes reached S3 in {where} objects {leaked}"
    with capsys.disabled():
        print(
            f"\nrace: {PUSHES} workspace pushes with {workspace_swaps} swaps ({skipped} entries "
            f"skipped), {PUSHES} volume pushes with {volume_swaps} swaps; no host bytes in S3"
        )
