"""Data volumes against a real SeaweedFS: plain keys any S3 tool reads, rw never deletes, rwd
does, ro never pushes."""

from __future__ import annotations

import uuid
from pathlib import Path

import botocore.session
import pytest

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
    name = f"vol-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="set/train/a.bin", Body=b"A" * 1000)
    client.put_object(Bucket=name, Key="set/train/b.bin", Body=b"B")
    client.put_object(Bucket=name, Key="set/README", Body=b"read me")
    client.put_object(Bucket=name, Key="elsewhere/keep", Body=b"k")
    return name, client


def keys(client, name: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", []))


def volume(s3: S3Server, name: str, permission: str) -> wire.VolumeAssignment:
    return wire.VolumeAssignment(
        volume=wire.Volume(name, "lab", "/mnt/data", "set", permission),  # type: ignore[arg-type]
        endpoint=s3.endpoint,
        region="us-east-1",
        access_key=s3.access_key,
        secret_key=s3.secret_key,
    )


async def cycle(tmp_path: Path, assigned: wire.VolumeAssignment, edit) -> None:
    sync = VolumeSync(str(tmp_path / "volumes"))
    try:
        await sync.pull("nb", [assigned])
        edit(Path(sync.volume_dir("nb", 0)))
        await sync.push("nb", [assigned])
        assert not Path(sync.notebook_dir("nb")).exists()
    finally:
        await sync.close()


def user_edits(root: Path) -> None:
    assert (root / "train/a.bin").read_bytes() == b"A" * 1000
    assert (root / "README").read_bytes() == b"read me"
    (root / "train/b.bin").unlink()
    (root / "README").write_text("edited")
    (root / "out/model.pt").parent.mkdir()
    (root / "out/model.pt").write_bytes(b"weights")


async def test_rw_uploads_plain_keys_and_never_deletes(tmp_path: Path, s3: S3Server, bucket):
    name, client = bucket
    await cycle(tmp_path, volume(s3, name, "rw"), user_edits)
    assert keys(client, name) == [
        "elsewhere/keep",
        "set/README",
        "set/out/model.pt",
        "set/train/a.bin",
        "set/train/b.bin",
    ]
    assert client.get_object(Bucket=name, Key="set/out/model.pt")["Body"].read() == b"weights"
    assert client.get_object(Bucket=name, Key="set/README")["Body"].read() == b"edited"


async def test_rwd_deletes_what_the_user_deleted(tmp_path: Path, s3: S3Server, bucket):
    name, client = bucket
    await cycle(tmp_path, volume(s3, name, "rwd"), user_edits)
    assert keys(client, name) == [
        "elsewhere/keep",
        "set/README",
        "set/out/model.pt",
        "set/train/a.bin",
    ]


async def test_ro_never_pushes(tmp_path: Path, s3: S3Server, bucket):
    name, client = bucket
    before = {k: client.get_object(Bucket=name, Key=k)["Body"].read() for k in keys(client, name)}
    await cycle(tmp_path, volume(s3, name, "ro"), user_edits)
    after = {k: client.get_object(Bucket=name, Key=k)["Body"].read() for k in keys(client, name)}
    assert after == before
