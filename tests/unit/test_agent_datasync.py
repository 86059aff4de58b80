"""Datasync's per-volume transfer (agent/datasync_transfer.py, agent/live_files.py) on real
files and an in-memory store: what a push uploads and records, ``rwd`` deletes, files that
keep changing, links never followed, and a pull that never clobbers the user's files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent import live_files
from agent.datasync_transfer import Abandoned, LiveTransfer
from agent.volume_transfer import read_record
from agent.volumes import VolumeSync
from common import wire
from tests.fakes.objectstore import FakeObjectStore

NB = "nb1"
BUCKET = "datasets"


class LiveFakeStore(FakeObjectStore):
    """The fake store plus what datasync uses: ``put_object`` (returns the md5 ETag a listing
    shows) and ``put_parts``, committed only when the caller's ``commit()`` says so.
    ``on_part(n)`` runs after part ``n`` is read (a user writing mid-upload); ``on_get(key)``
    after a download (a user writing while it downloads); ``aborted`` counts aborted
    multipart uploads."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 1_700_000_000.0)
        self.on_part: Callable[[int], None] | None = None
        self.on_get: Callable[[str], None] | None = None
        self.aborted = 0

    def etag(self, key: str) -> str:
        return hashlib.md5(self.objects[(BUCKET, key)][0]).hexdigest()

    async def put_object(self, bucket: str, key: str, data: bytes) -> str:
        self._enter("put_object")
        self._store(bucket, key, bytes(data), {})
        return hashlib.md5(data).hexdigest()

    async def put_parts(
        self,
        bucket: str,
        key: str,
        size: int,
        part_size: int,
        read_part: Callable[[int, int], Awaitable[bytes]],
        commit: Callable[[], Awaitable[bool]],
    ) -> str | None:
        self._enter("put_parts")
        parts = []
        for number, start in enumerate(range(0, size, part_size)):
            length = min(part_size, size - start)
            data = await read_part(start, length)
            if self.on_part is not None:
                self.on_part(number)
            if len(data) != length:
                self.aborted += 1
                return None
            parts.append(data)
        if not await commit():
            self.aborted += 1
            return None
        body = b"".join(parts)
        self._store(bucket, key, body, {})
        return hashlib.md5(body).hexdigest()

    async def get_file(self, bucket, key, out):
        metadata = await super().get_file(bucket, key, out)
        if self.on_get is not None:
            self.on_get(key)
        return metadata


def volume(permission: str = "rw", prefix: str = "set") -> wire.VolumeAssignment:
    return wire.VolumeAssignment(
        volume=wire.Volume(BUCKET, "lab", "/mnt/data", prefix, permission),  # type: ignore[arg-type]
        endpoint="http://s3.test",
        region="us-east-1",
        access_key="AK",
        secret_key="SK",
    )


def put(store: LiveFakeStore, key: str, data: bytes, at: float = 1_600_000_000.0) -> None:
    """An object written by someone else (another tool, another notebook) at ``at``."""
    store.objects[(BUCKET, key)] = (data, {})
    store.modified[(BUCKET, key)] = at


@pytest.fixture
def store() -> LiveFakeStore:
    s = LiveFakeStore()
    put(s, "set/a.txt", b"alpha")
    put(s, "set/sub/b.txt", b"beta")
    return s


@pytest.fixture
def sync(tmp_path: Path, store: LiveFakeStore) -> VolumeSync:
    return VolumeSync(str(tmp_path / "volumes"), store_factory=lambda _: store)


async def started(sync: VolumeSync, assigned: wire.VolumeAssignment) -> Path:
    """The volume as a start leaves it: pulled, its record written."""
    await sync.pull(NB, [assigned])
    return Path(sync.volume_dir(NB, 0))


def transfer(store: LiveFakeStore, assigned: wire.VolumeAssignment, **kwargs) -> LiveTransfer:
    return LiveTransfer(NB, 0, assigned.volume, store, 4, **kwargs)


async def push(sync: VolumeSync, store: LiveFakeStore, assigned, **kwargs):
    return await transfer(store, assigned, **kwargs).push(
        sync.volume_dir(NB, 0), sync.record_path(NB, 0)
    )


async def pull(sync: VolumeSync, store: LiveFakeStore, assigned, **kwargs):
    return await transfer(store, assigned, **kwargs).pull(
        sync.volume_dir(NB, 0), sync.record_path(NB, 0), sync.staging_dir(NB, 0)
    )


def age(path: Path, seconds: float = 60) -> None:
    """Make ``path`` look written ``seconds`` ago (not a write that may still be landing)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def body(store: LiveFakeStore, key: str) -> bytes:
    return store.objects[(BUCKET, key)][0]


# ---------------------------------------------------------------- push


async def test_push_uploads_what_changed_keeps_the_dir_and_the_stop_push_skips_it(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    (root / "a.txt").write_bytes(b"alpha, edited")
    (root / "new").mkdir()
    (root / "new/c.txt").write_bytes(b"gamma")
    age(root / "a.txt")
    age(root / "new/c.txt")
    seen: list[wire.Progress] = []
    out = await push(sync, store, assigned, progress=seen.append)
    assert (out.files, out.bytes, out.unchanged, out.deleted) == (2, 18, 1, 0)
    assert body(store, "set/a.txt") == b"alpha, edited"
    assert body(store, "set/new/c.txt") == b"gamma"
    assert root.is_dir() and (root / "a.txt").exists()  # the container is using it
    record = read_record(sync.record_path(NB, 0))
    assert record["new/c.txt"].etag == store.etag("set/new/c.txt")
    assert record["a.txt"].mtime_ns == (root / "a.txt").stat().st_mtime_ns
    assert seen[-1].phase == "volumes-push" and seen[-1].files_done == 2
    assert seen[-1].detail == "datasync datasets@lab/set:/mnt/data"

    # The stop's push, later: nothing left to upload.
    store.put_keys.clear()
    store.calls.clear()
    await sync.push(NB, [assigned])
    assert store.put_keys == [] and store.calls["put_file"] == 0


async def test_a_version_written_just_before_its_read_is_uploaded_again_by_the_stop(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    """A write in the same timestamp tick as the read would leave mtime unchanged: a recent
    version is recorded as untrusted, so the stop's push reads it again."""
    assigned = volume("rw")
    root = await started(sync, assigned)
    (root / "a.txt").write_bytes(b"fresh")
    await push(sync, store, assigned)
    assert read_record(sync.record_path(NB, 0))["a.txt"].mtime_ns == -1
    store.put_keys.clear()
    await sync.push(NB, [assigned])
    assert store.put_keys == ["set/a.txt"]


async def test_rw_never_deletes_and_rwd_deletes_only_the_objects_it_knows(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    rw = volume("rw")
    root = await started(sync, rw)
    (root / "a.txt").unlink()
    out = await push(sync, store, rw)
    assert out.deleted == 0 and (BUCKET, "set/a.txt") in store.objects

    put(store, "set/c.txt", b"gamma")
    rwd = volume("rwd")
    await sync.push(NB, [rw])  # the stop of that run (removes the dir), then a new start
    root = await started(sync, rwd)
    (root / "a.txt").unlink()
    (root / "sub/b.txt").unlink()
    (root / "c.txt").unlink()
    # Someone else rewrote b.txt in the bucket since the pull: theirs stays.
    put(store, "set/sub/b.txt", b"beta v2")
    out = await push(sync, store, rwd)
    assert out.deleted == 2
    assert (BUCKET, "set/a.txt") not in store.objects
    assert (BUCKET, "set/c.txt") not in store.objects
    assert body(store, "set/sub/b.txt") == b"beta v2"
    assert any("sub/b.txt: changed in the bucket" in d for d in out.details)
    assert read_record(sync.record_path(NB, 0)) == {}  # what went left the record too
    # The stop's push deletes nothing more.
    store.calls.clear()
    await sync.push(NB, [rwd])
    assert store.calls["delete"] == 0


async def test_rwd_keeps_the_object_of_a_file_that_came_back(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    rwd = volume("rwd")
    root = await started(sync, rwd)
    moved = root.parent / "elsewhere"
    (root / "sub").rename(moved)
    (root / "sub").symlink_to(moved)  # the directory is a link now: not "deleted"
    out = await push(sync, store, rwd)
    assert out.deleted == 0 and (BUCKET, "set/sub/b.txt") in store.objects
    assert any("sub: a symlink" in d for d in out.details)


async def test_links_and_fifos_are_never_followed_or_pushed(
    tmp_path: Path, sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    secret = tmp_path / "agent-secret"
    secret.write_bytes(b"TOP SECRET")
    (root / "leak.txt").symlink_to(secret)
    (root / "leakdir").symlink_to(tmp_path)
    os.mkfifo(root / "pipe")
    out = await push(sync, store, assigned)
    assert out.files == 0
    assert all(b"TOP SECRET" not in data for data, _ in store.objects.values())
    assert not [k for k in store.keys(BUCKET) if "leak" in k or "pipe" in k]
    assert out.skipped == 3
    assert any("leak.txt: a symlink" in d for d in out.details)
    assert any("pipe" in d and "special file" in d for d in out.details)


async def test_a_large_file_changing_during_its_upload_is_sent_again_never_torn(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    big = root / "big.bin"
    big.write_bytes(b"1" * (live_files.PART_SIZE + 100))
    age(big)
    writes = [b"2", b"3"]

    def user_writes(part: int) -> None:
        if part == 0 and writes:  # between two parts of the upload
            with open(big, "r+b") as f:
                f.seek(live_files.PART_SIZE + 10)
                f.write(writes.pop(0))
            age(big)

    store.on_part = user_writes
    out = await push(sync, store, assigned)
    assert out.files == 1 and out.unstable == 0 and store.aborted == 2
    uploaded = body(store, "set/big.bin")
    assert uploaded == big.read_bytes()  # the last version, whole
    assert uploaded[live_files.PART_SIZE + 10 : live_files.PART_SIZE + 11] == b"3"


async def test_a_file_that_keeps_changing_is_not_pushed_and_named_unstable(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    big = root / "log.bin"
    big.write_bytes(b"x" * (live_files.PART_SIZE + 1))

    def user_appends(part: int) -> None:
        with open(big, "ab") as f:
            f.write(b"more")

    store.on_part = user_appends
    out = await push(sync, store, assigned)
    assert out.unstable == 1 and out.files == 0
    assert (BUCKET, "set/log.bin") not in store.objects  # nothing torn is visible
    assert any(d.startswith("log.bin: kept changing") for d in out.details)
    assert "log.bin" not in read_record(sync.record_path(NB, 0))  # the stop's push takes it


def test_read_whole_reads_a_quiet_file_once_and_a_fresh_one_twice(tmp_path: Path) -> None:
    quiet = tmp_path / "quiet"
    quiet.write_bytes(b"q" * 1000)
    age(quiet)
    fresh = tmp_path / "fresh"
    fresh.write_bytes(b"f" * 1000)
    for path, data in ((quiet, b"q" * 1000), (fresh, b"f" * 1000)):
        fd = os.open(path, os.O_RDONLY)
        try:
            got = live_files.read_whole(fd)
        finally:
            os.close(fd)
        assert got is not None and got[0] == data and got[1].st_size == 1000
    assert live_files.recently_changed(fresh.stat())
    assert not live_files.recently_changed(quiet.stat())


async def test_a_push_of_a_notebook_being_deleted_stops_between_files(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    (root / "c.txt").write_bytes(b"c")
    with pytest.raises(Abandoned):
        await push(sync, store, assigned, keep_going=lambda: False)
    assert (BUCKET, "set/c.txt") not in store.objects


# ---------------------------------------------------------------- pull


async def test_pull_brings_new_and_changed_objects_and_keeps_the_users_changes(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    os.chown(root, 1000, 1000)  # as the start's chown leaves a rw volume
    (root / "sub/b.txt").write_bytes(b"beta, mine")
    (root / "mine.txt").write_bytes(b"my own")
    put(store, "set/a.txt", b"alpha v2")  # unchanged here: replaced
    put(store, "set/sub/b.txt", b"beta v2")  # changed here: conflict
    put(store, "set/mine.txt", b"theirs")  # not pulled before: conflict
    put(store, "set/new/deep/c.txt", b"gamma")  # new
    put(store, "set/../escape.txt", b"evil")
    seen: list[wire.Progress] = []
    out = await pull(sync, store, assigned, progress=seen.append)
    assert (out.files, out.conflicts, out.unchanged) == (2, 2, 0)
    assert (root / "a.txt").read_bytes() == b"alpha v2"
    assert (root / "new/deep/c.txt").read_bytes() == b"gamma"
    assert (root / "sub/b.txt").read_bytes() == b"beta, mine"
    assert (root / "mine.txt").read_bytes() == b"my own"
    assert not (root.parent / "escape.txt").exists()
    new = (root / "new/deep/c.txt").stat()
    assert (new.st_uid, new.st_gid) == (1000, 1000)
    assert (root / "new/deep").stat().st_uid == 1000
    assert new.st_mtime_ns == 1_600_000_000 * 10**9  # the object's time
    assert not Path(sync.staging_dir(NB, 0)).exists()
    assert seen[-1].phase == "volumes-pull" and seen[-1].files_done == 4
    assert any("sub/b.txt: changed here and in the bucket" in d for d in out.details)
    assert any("escape.txt" in d and "refused" in d for d in out.details)
    record = read_record(sync.record_path(NB, 0))
    assert record["a.txt"].etag == store.etag("set/a.txt")

    # Pulled files are as recorded: the stop's push uploads only the user's own changes.
    store.put_keys.clear()
    await sync.push(NB, [assigned])
    assert sorted(store.put_keys) == ["set/mine.txt", "set/sub/b.txt"]


async def test_pull_leaves_files_deleted_in_the_bucket_and_pulls_into_ro(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    ro = volume("ro")
    root = await started(sync, ro)
    del store.objects[(BUCKET, "set/a.txt")]
    put(store, "set/d.txt", b"delta")
    out = await pull(sync, store, ro)
    assert (root / "a.txt").read_bytes() == b"alpha"
    assert (root / "d.txt").read_bytes() == b"delta"
    assert out.files == 1 and out.unchanged == 1
    assert any("a.txt: deleted in the bucket" in d for d in out.details)


async def test_pull_never_writes_through_a_link(
    tmp_path: Path, sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "linked").symlink_to(outside)
    (root / "file-link.txt").symlink_to(outside / "target.txt")
    put(store, "set/linked/x.txt", b"x")
    put(store, "set/file-link.txt", b"y")
    out = await pull(sync, store, assigned)
    assert list(outside.iterdir()) == []
    assert (root / "file-link.txt").is_symlink()
    assert out.files == 0 and out.conflicts == 2


async def test_a_file_the_user_changes_during_the_download_is_kept(
    sync: VolumeSync, store: LiveFakeStore
) -> None:
    assigned = volume("rw")
    root = await started(sync, assigned)
    put(store, "set/a.txt", b"alpha v2")
    put(store, "set/e.txt", b"epsilon")

    def user_writes(key: str) -> None:
        if key == "set/a.txt":
            (root / "a.txt").write_bytes(b"alpha, mine now")
        if key == "set/e.txt":
            (root / "e.txt").write_bytes(b"mine first")

    store.on_get = user_writes
    out = await pull(sync, store, assigned)
    assert (root / "a.txt").read_bytes() == b"alpha, mine now"
    assert (root / "e.txt").read_bytes() == b"mine first"
    assert out.files == 0 and out.conflicts == 2
    assert any("a.txt: changed here meanwhile" in d for d in out.details)
    assert any("e.txt: appeared here meanwhile" in d for d in out.details)
    record = read_record(sync.record_path(NB, 0))
    assert "e.txt" not in record and record["a.txt"].etag != store.etag("set/a.txt")


def test_place_over_swaps_only_the_pulled_version(tmp_path: Path) -> None:
    staging, target = tmp_path / "staging", tmp_path / "target"
    staging.mkdir()
    target.mkdir()
    (target / "f").write_bytes(b"old")
    pulled = (target / "f").stat()
    (staging / "t").write_bytes(b"new")
    s_fd, t_fd = os.open(staging, os.O_RDONLY), os.open(target, os.O_RDONLY)
    try:
        assert live_files.place_over(s_fd, "t", t_fd, "f", (3, pulled.st_mtime_ns))
        assert (target / "f").read_bytes() == b"new" and (staging / "t").read_bytes() == b"old"
        (staging / "t").write_bytes(b"newer")
        assert not live_files.place_over(s_fd, "t", t_fd, "f", (3, pulled.st_mtime_ns))
        assert (target / "f").read_bytes() == b"new"  # not the version pulled: kept
        assert live_files.place_new(s_fd, "t", t_fd, "g")
        assert not live_files.place_new(s_fd, "t", t_fd, "g")
    finally:
        os.close(s_fd)
        os.close(t_fd)
