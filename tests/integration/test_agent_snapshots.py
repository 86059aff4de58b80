"""``nbfleet-agent workspace`` as a process against a real SeaweedFS: kill -9 in the middle of a
push, then restore the previous snapshot and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.objectstore import S3ObjectStore
from agent.workspace import engine
from tests.support.s3server import S3Server

MiB = 1024 * 1024
OLD_NS = 1_600_000_000_000_000_000


def cli(s3: S3Server, state: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=s3.access_key,
        AWS_SECRET_ACCESS_KEY=s3.secret_key,
        AWS_ENDPOINT_URL=s3.endpoint,
    )
    command = [sys.executable, "-m", "agent.main", "workspace", *args]
    return subprocess.Popen(
        [*command, "--state-dir", str(state), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"exit {process.returncode}: {err}"
    return json.loads(out)


def tree(root: Path) -> dict[str, tuple]:
    found: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("l", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("d", st.st_mode)
        else:
            found[rel] = ("f", st.st_mode, st.st_mtime_ns, path.read_bytes())
    return found


@pytest.fixture
async def store(s3: S3Server):
    s = S3ObjectStore(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key)
    yield s
    await s.close()


async def test_kill_9_mid_push_keeps_previous_snapshot_and_resume_reuploads_nothing(
    s3: S3Server, store: S3ObjectStore, tmp_path: Path
) -> None:
    bucket, prefix = f"it-{uuid.uuid4().hex[:12]}", "nbk/workspace/"
    state = tmp_path / "state"
    ws = tmp_path / "ws"
    (ws / "notes").mkdir(parents=True)
    for i in range(50):
        (ws / "notes" / f"n{i}.txt").write_text(f"note {i}\n" * (i + 1))
    os.symlink("/etc/passwd", ws / "passwd")
    first = finish(cli(s3, state, "push", str(ws), "--bucket", bucket, "--prefix", prefix))
    assert first["files"] == 50 and not first["unchanged"]
    before = tree(ws)

    # Enough new content that one connection takes seconds: 3 packs and 24 chunks.
    for i in range(130):
        (ws / "data" / f"d{i // 10}").mkdir(parents=True, exist_ok=True)
        (ws / "data" / f"d{i // 10}" / f"f{i}.bin").write_bytes(os.urandom(MiB))
    (ws / "model.bin").write_bytes(os.urandom(24 * 8 * MiB))
    for path in ws.rglob("*"):
        os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)
    args = ("push", str(ws), "--bucket", bucket, "--prefix", prefix, "--concurrency", "1")
    pushing = cli(s3, state, *args)
    deadline = time.monotonic() + 120
    while True:
        keys = [o.key for o in await store.list(bucket, prefix)]
        idx = [k for k in keys if k.endswith(".idx")]
        chunks = [k for k in keys if "/chunks/" in k]
        if idx and len(chunks) >= 2:
            break
        assert pushing.poll() is None, f"the push ended before it could be killed: {keys}"
        assert time.monotonic() < deadline, f"no pack and chunks appeared within 120s: {keys}"
        time.sleep(0.05)
    pushing.send_signal(signal.SIGKILL)
    pushing.wait(timeout=30)
    assert pushing.returncode == -signal.SIGKILL
    left = {o.key: (o.etag, o.modified) for o in await store.list(bucket, prefix)}
    assert [k for k in left if "/snapshots/" in k] == [
        f"{prefix}snapshots/{first['snapshot']['id']}"
    ], "the killed push committed nothing"

    restored = tmp_path / "restored"
    listed = finish(cli(s3, state, "list", "--bucket", bucket, "--prefix", prefix))
    assert [item["id"] for item in listed["items"]] == [first["snapshot"]["id"]]
    out = finish(
        cli(
            s3,
            tmp_path / "other-state",
            "restore",
            str(restored),
            "--bucket",
            bucket,
            "--prefix",
            prefix,
        )
    )
    assert out["snapshot"]["id"] == first["snapshot"]["id"]
    assert tree(restored) == before, "the previous snapshot restores byte for byte"

    second = finish(cli(s3, state, *args))
    assert not second["unchanged"] and second["reused_objects"] >= 1
    after = {o.key: (o.etag, o.modified) for o in await store.list(bucket, prefix)}
    for key, seen in left.items():
        assert after.get(key) == seen, f"{key} was uploaded again or deleted"
    manifest, _ = await engine.load_manifest(store, bucket, prefix, second["snapshot"]["id"])
    used = {blob.key for blob in manifest.blobs.values()}
    finished = [
        k[len(prefix) :]
        for k in left
        if "/chunks/" in k or (k.endswith(".idx") and k[: -len(".idx")] in left)
    ]
    for key in finished:
        assert key.removesuffix(".idx") in used, (
            f"{key} finished before the kill but was not reused"
        )
    finished_bytes = sum(
        o.size
        for o in await store.list(bucket, prefix)
        if o.key[len(prefix) :] in used and o.key in left
    )
    total = 130 * MiB + 24 * 8 * MiB
    assert second["uploaded_bytes"] <= total - finished_bytes + MiB

    final = tmp_path / "final"
    finish(
        cli(
            s3,
            tmp_path / "third-state",
            "restore",
            str(final),
            "--bucket",
            bucket,
            "--prefix",
            prefix,
        )
    )
    assert tree(final) == tree(ws)


def fail(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, f"exit {process.returncode}, expected 1: {out} {err}"
    return err


async def test_restore_of_a_missing_or_unreadable_snapshot_is_an_error_not_an_empty_dir(
    s3: S3Server, store: S3ObjectStore, tmp_path: Path
) -> None:
    bucket, prefix = f"it-{uuid.uuid4().hex[:12]}", "nbr/workspace/"
    await store.ensure_bucket(bucket)
    state = tmp_path / "state"
    where = ["--bucket", bucket, "--prefix", prefix]

    # nothing under the prefix: a failure naming it, and nothing left on disk
    err = fail(cli(s3, state, "restore", str(tmp_path / "none"), *where))
    assert f"no snapshot in s3://{bucket}/{prefix}" in err
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.restoring").exists()

    # the only manifest does not decode: a failure naming it
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("first")
    first = finish(cli(s3, state, "push", str(ws), *where))["snapshot"]["id"]
    key = prefix + "snapshots/" + first
    good = await store.get_bytes(bucket, key)
    await store.delete(bucket, [key])
    broken = first[:-1] + ("0" if first[-1] != "0" else "1")
    await store.put_bytes(bucket, prefix + "snapshots/" + broken, good[: len(good) // 2])
    err = fail(cli(s3, state, "restore", str(tmp_path / "only-broken"), *where))
    assert broken in err and "does not decode" in err
    assert not (tmp_path / "only-broken.restoring").exists()

    # a readable older one and an unreadable newest: loud, and only with --allow-older
    await store.put_bytes(bucket, key, good)
    newest = engine.mf.new_snapshot_id(time.time() + 60)
    await store.put_bytes(bucket, prefix + "snapshots/" + newest, good[:10])
    err = fail(cli(s3, state, "restore", str(tmp_path / "r1"), *where))
    assert newest in err and first in err and "allow older" in err
    restore = cli(s3, state, "restore", str(tmp_path / "r2"), *where, "--allow-older")
    out, err = restore.communicate(timeout=300)
    assert restore.returncode == 0, err
    assert json.loads(out)["snapshot"]["id"] == first
    assert f"skipped unreadable manifest of snapshot {newest}" in err
    assert (tmp_path / "r2" / "a.txt").read_text() == "first"


async def test_holes_hard_links_and_root_mode_round_trip_through_s3(
    s3: S3Server, tmp_path: Path
) -> None:
    bucket, prefix = f"it-{uuid.uuid4().hex[:12]}", "nbf/workspace/"
    state = tmp_path / "state"
    where = ["--bucket", bucket, "--prefix", prefix]
    ws = tmp_path / "ws"
    ws.mkdir()
    os.chmod(ws, 0o751)
    with open(ws / "disk.img", "wb") as out:
        out.truncate(1 << 30)  # 1 GiB, all hole
        out.seek(300 * MiB)
        out.write(b"data in the middle")
    (ws / "weights.bin").write_bytes(os.urandom(MiB))
    os.link(ws / "weights.bin", ws / "weights-link.bin")
    pushed = finish(cli(s3, state, "push", str(ws), *where))
    assert pushed["read_bytes"] < 10 * MiB  # one 8 MiB chunk of disk.img and weights.bin
    dest = tmp_path / "dest"
    restored = finish(cli(s3, tmp_path / "state2", "restore", str(dest), *where))
    assert restored["hard_links"] == 1
    assert os.stat(dest).st_mode & 0o777 == 0o751
    image = os.stat(dest / "disk.img")
    assert image.st_size == 1 << 30 and image.st_blocks * 512 <= 9 * MiB
    with open(dest / "disk.img", "rb") as source:
        source.seek(300 * MiB)
        assert source.read(18) == b"data in the middle"
    assert os.stat(dest / "weights.bin").st_ino == os.stat(dest / "weights-link.bin").st_ino
    assert (dest / "weights.bin").read_bytes() == (ws / "weights.bin").read_bytes()
