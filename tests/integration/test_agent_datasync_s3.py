"""Datasync's store calls against a real SeaweedFS: a multipart upload becomes visible only when
committed (an aborted one leaves neither object nor pending upload), the ETags datasync records
are the ones a listing shows (so ``rwd`` deletes what it pushed, multipart or not), and a pull
of new objects into a live volume dir."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import botocore.session
import pytest

from agent import live_files
from agent.datasync_transfer import LiveTransfer
from agent.objectstore import S3ObjectStore
from agent.volume_transfer import read_record
from agent.volumes import VolumeSync
from common import wire
from tests.support.s3server import S3Server


@pytest.fixture
def bucket(s3: S3Server):
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )
    name = f"sync-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="set/a.txt", Body=b"alpha")
    return name, client


@pytest.fixture
async def store(s3: S3Server):
    real = S3ObjectStore(s3.endpoint, "us-east-1", s3.access_key, s3.secret_key)
    yield real
    await real.close()


def volume(s3: S3Server, name: str, permission: str) -> wire.VolumeAssignment:
    return wire.VolumeAssignment(
        volume=wire.Volume(name, "lab", "/mnt/data", "set", permission),  # type: ignore[arg-type]
        endpoint=s3.endpoint,
        region="us-east-1",
        access_key=s3.access_key,
        secret_key=s3.secret_key,
    )


def old(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 60 * 10**9))


async def test_put_parts_is_visible_only_once_committed(store: S3ObjectStore, bucket) -> None:
    name, client = bucket
    size, part = live_files.PART_SIZE + 1000, live_files.PART_SIZE
    data = os.urandom(size)

    async def read_part(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    async def refuse() -> bool:
        return False

    async def accept() -> bool:
        return True

    assert await store.put_parts(name, "set/big.bin", size, part, read_part, refuse) is None
    assert "Contents" not in client.list_objects_v2(Bucket=name, Prefix="set/big")
    assert not client.list_multipart_uploads(Bucket=name).get("Uploads")

    async def short(offset: int, length: int) -> bytes:
        return data[offset : offset + length - 1]  # the file shrank under the read

    assert await store.put_parts(name, "set/big.bin", size, part, short, accept) is None
    assert "Contents" not in client.list_objects_v2(Bucket=name, Prefix="set/big")

    etag = await store.put_parts(name, "set/big.bin", size, part, read_part, accept)
    assert client.get_object(Bucket=name, Key="set/big.bin")["Body"].read() == data
    listed = {o.key: o.etag for o in await store.list(name, "set/")}
    assert etag == listed["set/big.bin"]
    assert await store.put_object(name, "set/small", b"s") == next(
        o.etag for o in await store.list(name, "set/small")
    )


async def test_rwd_deletes_what_a_datasync_pushed_and_a_pull_fills_the_live_dir(
    tmp_path: Path, s3: S3Server, store: S3ObjectStore, bucket
) -> None:
    name, client = bucket
    rwd = volume(s3, name, "rwd")
    sync = VolumeSync(str(tmp_path / "volumes"))
    try:
        await sync.pull("nb", [rwd])
        root = Path(sync.volume_dir("nb", 0))
        (root / "big.bin").write_bytes(os.urandom(live_files.PART_SIZE + 5))
        (root / "small.txt").write_bytes(b"small")
        old(root / "big.bin")
        old(root / "small.txt")
        transfer = LiveTransfer("nb", 0, rwd.volume, store, 4)
        out = await transfer.push(str(root), sync.record_path("nb", 0))
        assert out.files == 2
        record = read_record(sync.record_path("nb", 0))
        listed = {o.key: o.etag for o in await store.list(name, "set/")}
        assert record["big.bin"].etag == listed["set/big.bin"]
        assert record["small.txt"].etag == listed["set/small.txt"]

        (root / "big.bin").unlink()
        (root / "small.txt").unlink()
        out = await LiveTransfer("nb", 0, rwd.volume, store, 4).push(
            str(root), sync.record_path("nb", 0)
        )
        assert out.deleted == 2
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]]
        assert keys == ["set/a.txt"]

        client.put_object(Bucket=name, Key="set/new/n.txt", Body=b"new")
        out = await LiveTransfer("nb", 0, rwd.volume, store, 4).pull(
            str(root), sync.record_path("nb", 0), sync.staging_dir("nb", 0)
        )
        assert (out.files, out.unchanged) == (1, 1)
        assert (root / "new/n.txt").read_bytes() == b"new"
        # The stop's push, later: nothing to move.
        await sync.push("nb", [rwd])
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"])
        assert keys == ["set/a.txt", "set/new/n.txt"]
    finally:
        await sync.close()
