"""The S3 adapter and the snapshot engine against a real SeaweedFS server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from agent.objectstore import AlreadyExists, NotFound, S3ObjectStore
from agent.workspace import engine
from agent.workspace.restore import restore
from tests.support.s3server import S3Server

MTIME_NS = 1_600_000_000_123_456_789
P = "nb1/workspace/"


@pytest.fixture
async def store(s3: S3Server):
    s = S3ObjectStore(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key)
    yield s
    await s.close()


@pytest.fixture
async def bucket(store: S3ObjectStore) -> str:
    name = f"it-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    await store.ensure_bucket(name)  # idempotent
    return name


def make_tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "run.sh", 0o750)
    (root / "secret.txt").write_text("mine")
    os.chmod(root / "secret.txt", 0o600)
    (root / "données é.csv").write_text("a;b\n")
    (root / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024 + 17))
    (root / "empty-dir").mkdir()
    os.symlink("/etc/passwd", root / "passwd-link")
    os.symlink("src/pkg", root / "pkg-link")
    for path in root.rglob("*"):
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


async def test_conditional_put_refuses_to_overwrite(store: S3ObjectStore, bucket: str) -> None:
    await store.put_bytes(bucket, "snapshots/x", b"first", if_none_match=True)
    with pytest.raises(AlreadyExists):
        await store.put_bytes(bucket, "snapshots/x", b"second", if_none_match=True)
    assert await store.get_bytes(bucket, "snapshots/x") == b"first"


async def test_ranged_get_multipart_put_and_missing_key(store: S3ObjectStore, bucket: str) -> None:
    data = os.urandom(40 * 1024 * 1024 + 5)  # above the multipart threshold
    await store.put_bytes(bucket, "big", data, metadata={"kind": "test"})
    assert await store.get_bytes(bucket, "big", 10, 20) == data[10:20]
    assert await store.get_bytes(bucket, "big") == data
    [listed] = await store.list(bucket, "big", metadata=True)
    assert listed.size == len(data) and listed.modified > 0 and listed.metadata == {"kind": "test"}
    with pytest.raises(NotFound):
        await store.get_bytes(bucket, "missing")


async def test_push_restore_round_trip(store: S3ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src-ws"
    make_tree(src)
    index = str(tmp_path / "index")
    pushed = await engine.push(store, bucket, P, str(src), index_dir=index, kind="stop")
    assert pushed.files == 5 and pushed.uploaded_objects >= 3

    # The link to /etc/passwd is stored as a link: the host's file never leaves the host.
    passwd = Path("/etc/passwd").read_bytes()[:64]
    for obj in await store.list(bucket, P):
        assert passwd not in await store.get_bytes(bucket, obj.key), obj.key

    again = await engine.push(store, bucket, P, str(src), index_dir=index)
    assert again.unchanged and again.uploaded_objects == 0

    dest = tmp_path / "restored" / "nb1"
    dest.parent.mkdir()
    restored = await restore(store, bucket, P, str(dest), concurrency=4)
    assert (restored.files, restored.symlinks) == (5, 2)
    assert not Path(str(dest) + ".restoring").exists()
    assert os.readlink(dest / "passwd-link") == "/etc/passwd"
    assert os.readlink(dest / "pkg-link") == "src/pkg"
    assert (dest / "empty-dir").is_dir()
    for relpath in ["src/pkg/mod.py", "run.sh", "secret.txt", "données é.csv", "big.bin"]:
        original, copy = os.stat(src / relpath), os.stat(dest / relpath)
        assert (dest / relpath).read_bytes() == (src / relpath).read_bytes(), relpath
        assert copy.st_mode == original.st_mode, relpath
        assert copy.st_mtime_ns == MTIME_NS, relpath
    assert os.lstat(dest / "passwd-link").st_mtime_ns == MTIME_NS


async def test_list_of_missing_bucket_is_empty(store: S3ObjectStore) -> None:
    assert await store.list(f"missing-{uuid.uuid4().hex[:8]}", "x/") == []
