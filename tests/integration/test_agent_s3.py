"""The workspace mirror and the S3 adapter against a real SeaweedFS server."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from agent.objectstore import ObjectInfo, S3ObjectStore
from agent.workspace import mirror
from tests.support.s3server import S3Server

MTIME_NS = 1_600_000_000_123_456_789


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
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    os.symlink("/etc/passwd", root / "passwd-link")
    os.symlink("src/pkg", root / "pkg-link")
    for path in root.rglob("*"):
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


async def test_push_restore_round_trip(store: S3ObjectStore, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src-ws"
    make_tree(src)
    prefix = mirror.workspace_prefix("nb1")
    events: list[tuple[str, int, int]] = []
    pushed = await mirror.push(
        store, bucket, prefix, str(src), concurrency=4, progress=lambda *e: events.append(e)
    )
    assert pushed.uploaded == 7 and pushed.deleted == 0
    assert events[-1] == ("upload", 7, 7)

    objects = {o.key: o for o in await store.list(bucket, prefix, metadata=True)}
    link = objects[prefix + "passwd-link"]
    assert link.size == 0  # the link, never /etc/passwd's content
    assert link.metadata["symlink"] == "%2Fetc%2Fpasswd"

    again = await mirror.push(store, bucket, prefix, str(src))
    assert (again.uploaded, again.skipped) == (0, 7)

    dest = tmp_path / "restored" / "nb1"
    restored = await mirror.restore(store, bucket, prefix, str(dest), concurrency=4)
    assert (restored.files, restored.symlinks, restored.refused) == (5, 2, [])
    assert not Path(str(dest) + ".restoring").exists()
    assert os.readlink(dest / "passwd-link") == "/etc/passwd"
    assert os.readlink(dest / "pkg-link") == "src/pkg"
    for relpath in ["src/pkg/mod.py", "run.sh", "secret.txt", "données é.csv", "big.bin"]:
        original, copy = os.stat(src / relpath), os.stat(dest / relpath)
        assert (dest / relpath).read_bytes() == (src / relpath).read_bytes(), relpath
        assert copy.st_mode == original.st_mode, relpath
        assert copy.st_mtime_ns == MTIME_NS, relpath
    assert os.lstat(dest / "passwd-link").st_mtime_ns == MTIME_NS


async def test_push_deletes_remote_extras_last(
    store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "ws"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}.txt").write_text(str(i))
    prefix = mirror.workspace_prefix("nb2")
    await mirror.push(store, bucket, prefix, str(src), concurrency=8)
    for i in range(10, 30):
        (src / f"f{i}.txt").unlink()
    (src / "new.txt").write_text("new")
    result = await mirror.push(store, bucket, prefix, str(src))
    assert (result.uploaded, result.deleted, result.skipped) == (1, 20, 10)
    keys = sorted(o.key for o in await store.list(bucket, prefix))
    assert keys == sorted([prefix + f"f{i}.txt" for i in range(10)] + [prefix + "new.txt"])
    assert await mirror.delete_prefix(store, bucket, prefix) == 11
    assert await store.list(bucket, prefix) == []


class PlantedListing:
    """The real store, with keys a hostile or buggy writer could have left in the listing
    (SeaweedFS itself refuses to store ``..`` keys)."""

    def __init__(self, real: S3ObjectStore, planted: list[str]) -> None:
        self.real = real
        self.planted = planted

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]:
        found = await self.real.list(bucket, prefix, metadata)
        return found + [ObjectInfo(key=key, size=5) for key in self.planted]

    def __getattr__(self, name: str):
        return getattr(self.real, name)


async def test_restore_refuses_dotdot_and_absolute_keys(
    store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    prefix = mirror.workspace_prefix("nb3")
    src = tmp_path / "ws"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    await mirror.push(store, bucket, prefix, str(src))
    with pytest.raises(Exception, match="Invalid"):
        await store.put_file(bucket, prefix + "../escape", None, {})  # the server says no too
    bad = [prefix + "../../escape", prefix + "/etc/cron.d/x", prefix + "a/../../b"]
    dest = tmp_path / "dest" / "nb3"
    result = await mirror.restore(PlantedListing(store, bad), bucket, prefix, str(dest))
    assert sorted(result.refused) == sorted(bad)
    assert sorted(os.listdir(dest)) == ["ok.txt"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "dest" / "escape").exists()


async def test_list_of_missing_bucket_is_empty(store: S3ObjectStore) -> None:
    assert await store.list(f"missing-{uuid.uuid4().hex[:8]}", "x/") == []
