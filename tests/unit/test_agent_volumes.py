"""VolumeSync on an in-memory store: pull layout, what rw/rwd/ro push, unsafe keys, symlinks,
failures naming the volume, and host dirs kept only on failure."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.objectstore import ObjectInfo, StoreError
from agent.volume_transfer import describe, safe_relative
from agent.volumes import VolumeSync, VolumeSyncError
from common import wire
from common.states import NotebookState

NB = "nb1"


class FakeObjectStore:
    """The four calls volumes use, in memory, with an outage switch (``down_for(n)``: the next
    ``n`` calls raise ``StoreError``) and call counts. Kept here, not in tests/fakes, so the
    workspace engine's richer fake can change freely."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.calls: Counter[str] = Counter()
        self._down = 0

    def down_for(self, calls: int) -> None:
        self._down = calls

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self._down > 0:
            self._down -= 1
            raise StoreError(f"{name}: connection refused (fake outage)")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))

    async def put_file(self, bucket: str, key: str, body: BinaryIO | None, metadata) -> None:
        self._enter("put_file")
        if body is not None:
            body.seek(0)
        self.objects[(bucket, key)] = (body.read() if body else b"", dict(metadata))

    async def get_file(self, bucket: str, key: str, out: BinaryIO) -> dict[str, str]:
        self._enter("get_file")
        if (bucket, key) not in self.objects:
            raise StoreError(f"no such key {key}")
        out.write(self.objects[(bucket, key)][0])
        return dict(self.objects[(bucket, key)][1])

    async def list(self, bucket: str, prefix: str, metadata: bool = False) -> list[ObjectInfo]:
        self._enter("list")
        return [
            ObjectInfo(k, len(b), hashlib.md5(b).hexdigest())
            for k in self.keys(bucket, prefix)
            for b in [self.objects[(bucket, k)][0]]
        ]

    async def delete(self, bucket: str, keys: list[str]) -> None:
        self._enter("delete")
        for key in keys:
            self.objects.pop((bucket, key), None)

    async def close(self) -> None:
        pass


def assigned(permission: str = "rw", prefix: str = "imagenet", **fields) -> wire.VolumeAssignment:
    volume = wire.Volume(
        container=fields.pop("container", "datasets"),
        alias=fields.pop("alias", "lab-s3"),
        mount_path=fields.pop("mount_path", "/workspace/data"),
        prefix=prefix,
        permission=permission,  # type: ignore[arg-type]
    )
    return wire.VolumeAssignment(
        volume=volume,
        endpoint=fields.pop("endpoint", "http://s3.test"),
        region="us-east-1",
        access_key=fields.pop("access_key", "AK"),
        secret_key="SK",
    )


@pytest.fixture
def store() -> FakeObjectStore:
    s = FakeObjectStore()
    s.objects[("datasets", "imagenet/train/a.jpg")] = (b"aaaa", {})
    s.objects[("datasets", "imagenet/train/b.jpg")] = (b"bb", {})
    s.objects[("datasets", "imagenet/labels.csv")] = (b"x,y\n", {})
    s.objects[("datasets", "other/ignored.txt")] = (b"no", {})
    return s


@pytest.fixture
def sync(tmp_path: Path, store: FakeObjectStore) -> VolumeSync:
    return VolumeSync(str(tmp_path / "volumes"), store_factory=lambda _: store, clock=lambda: 1.0)


def body(store: FakeObjectStore, key: str, bucket: str = "datasets") -> bytes:
    return store.objects[(bucket, key)][0]


def test_describe_and_safe_relative() -> None:
    assert describe(assigned().volume) == "datasets@lab-s3/imagenet:/workspace/data"
    assert describe(assigned(prefix="").volume) == "datasets@lab-s3:/workspace/data"
    assert safe_relative("a/b.txt") == os.path.join("a", "b.txt")
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\x00b", "a\\..\\b"]:
        assert safe_relative(bad) is None, bad


async def test_pull_lays_out_plain_keys_and_reports_progress(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    seen: list[wire.Progress] = []
    await sync.pull(NB, [assigned()], seen.append)
    root = Path(sync.volume_dir(NB, 0))
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "labels.csv",
        "train/a.jpg",
        "train/b.jpg",
    ]
    assert (root / "train/a.jpg").read_bytes() == b"aaaa"
    assert not Path(str(root) + ".pulling").exists()
    assert seen[0].phase == "volumes-pull" and seen[0].files_done == 0
    assert (seen[-1].files_done, seen[-1].files_total, seen[-1].bytes_done) == (3, 3, 10)
    assert seen[-1].detail == "datasets@lab-s3/imagenet:/workspace/data"
    mounts = sync.mounts(NB, [assigned(), assigned("ro", mount_path="/models/")])
    assert mounts == [
        (sync.volume_dir(NB, 0), "/workspace/data", False),
        (sync.volume_dir(NB, 1), "/models", True),
    ]


async def test_prefix_is_a_directory_and_empty_prefix_is_the_bucket(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    store.objects[("datasets", "imagenetwork/not-mine")] = (b"!", {})
    await sync.pull(NB, [assigned(prefix="imagenet/"), assigned(prefix="", mount_path="/all")])
    assert not (Path(sync.volume_dir(NB, 0)) / "work").exists()
    assert not list(Path(sync.volume_dir(NB, 0)).glob("*not-mine*"))
    everything = Path(sync.volume_dir(NB, 1))
    assert (everything / "other/ignored.txt").read_bytes() == b"no"
    assert (everything / "imagenetwork/not-mine").exists()


async def test_pull_refuses_keys_that_escape(
    tmp_path: Path, sync: VolumeSync, store: FakeObjectStore
) -> None:
    for key in ["imagenet/../escape.txt", "imagenet//abs", "imagenet/a/./b", "imagenet/dir/"]:
        store.objects[("datasets", key)] = (b"evil", {})
    await sync.pull(NB, [assigned()])
    root = Path(sync.volume_dir(NB, 0))
    assert not (root.parent / "escape.txt").exists()
    assert not list(tmp_path.rglob("escape.txt"))
    assert (root / "dir").is_dir()  # a directory marker becomes a directory
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["labels.csv", "train/a.jpg", "train/b.jpg"]


async def test_rw_uploads_additions_and_changes_but_never_deletes(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    await sync.pull(NB, [assigned("rw")])
    root = Path(sync.volume_dir(NB, 0))
    (root / "train/a.jpg").write_bytes(b"changed!")
    (root / "train/b.jpg").unlink()
    (root / "new/deep").mkdir(parents=True)
    (root / "new/deep/c.txt").write_text("new")
    store.calls.clear()
    seen: list[wire.Progress] = []
    await sync.push(NB, [assigned("rw")], seen.append)
    assert body(store, "imagenet/train/a.jpg") == b"changed!"
    assert body(store, "imagenet/new/deep/c.txt") == b"new"
    assert body(store, "imagenet/train/b.jpg") == b"bb"  # deleted locally, kept remotely
    assert store.calls["put_file"] == 2  # labels.csv unchanged: not uploaded
    assert store.calls["delete"] == 0
    assert seen[-1].phase == "volumes-push" and seen[-1].files_done == 2
    assert not root.exists() and not Path(sync.notebook_dir(NB)).exists()


async def test_each_volume_pull_and_push_is_told_with_its_bytes_for_the_metrics(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    told: list[tuple[str, int]] = []
    sync.on_sync = lambda kind, seconds, moved: told.append((kind, moved)) if seconds >= 0 else 0
    await sync.pull(NB, [assigned("rw")])
    (Path(sync.volume_dir(NB, 0)) / "train/a.jpg").write_bytes(b"changed!")
    await sync.push(NB, [assigned("rw")])
    # 10 bytes pulled (three objects), the 8 changed ones pushed; pulled again (now 14
    # bytes) read-only, it is never pushed.
    await sync.pull(NB, [assigned("ro")])
    await sync.push(NB, [assigned("ro")])
    assert told == [("volume-pull", 10), ("volume-push", 8), ("volume-pull", 14)]


async def test_rwd_also_deletes_what_the_user_deleted(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    await sync.pull(NB, [assigned("rwd")])
    root = Path(sync.volume_dir(NB, 0))
    (root / "train/b.jpg").unlink()
    (root / "labels.csv").unlink()
    (root / "added.txt").write_text("+")
    await sync.push(NB, [assigned("rwd")])
    assert store.keys("datasets") == [
        "imagenet/added.txt",
        "imagenet/train/a.jpg",
        "other/ignored.txt",
    ]


async def test_rwd_keeps_an_object_someone_else_replaced(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    await sync.pull(NB, [assigned("rwd")])
    (Path(sync.volume_dir(NB, 0)) / "labels.csv").unlink()
    store.objects[("datasets", "imagenet/labels.csv")] = (b"newer, from another tool", {})
    await sync.push(NB, [assigned("rwd")])
    assert body(store, "imagenet/labels.csv") == b"newer, from another tool"


async def test_ro_is_never_pushed(sync: VolumeSync, store: FakeObjectStore) -> None:
    await sync.pull(NB, [assigned("ro")])
    root = Path(sync.volume_dir(NB, 0))
    (root / "labels.csv").write_text("tampered")
    (root / "train/a.jpg").unlink()
    store.calls.clear()
    await sync.push(NB, [assigned("ro")])
    assert store.calls == {}
    assert body(store, "imagenet/labels.csv") == b"x,y\n"
    assert body(store, "imagenet/train/a.jpg") == b"aaaa"
    assert not root.exists()


async def test_push_never_follows_symlinks(
    tmp_path: Path, sync: VolumeSync, store: FakeObjectStore
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("root only")
    (tmp_path / "host-dir").mkdir()
    (tmp_path / "host-dir/inside.txt").write_text("also host")
    await sync.pull(NB, [assigned("rwd")])
    root = Path(sync.volume_dir(NB, 0))
    (root / "link.txt").symlink_to(secret)
    (root / "linkdir").symlink_to(tmp_path / "host-dir")
    # A pulled file replaced by a link counts as deleted, and its target is never read.
    (root / "labels.csv").unlink()
    (root / "labels.csv").symlink_to(secret)
    await sync.push(NB, [assigned("rwd")])
    assert all(
        b"root only" not in v[0] and b"also host" not in v[0] for v in store.objects.values()
    )
    assert "imagenet/link.txt" not in store.keys("datasets")
    assert "imagenet/linkdir/inside.txt" not in store.keys("datasets")


async def test_a_missing_volume_dir_pushes_and_deletes_nothing(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    before = dict(store.objects)
    await sync.push(NB, [assigned("rwd")])
    assert store.objects == before and store.calls == {}


async def test_push_failure_names_the_volume_keeps_the_dir_and_loses_nothing(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    volumes = [assigned("rwd"), assigned("rw", mount_path="/mnt/b", prefix="other")]
    await sync.pull(NB, volumes)
    (Path(sync.volume_dir(NB, 0)) / "labels.csv").unlink()
    (Path(sync.volume_dir(NB, 0)) / "new.txt").write_text("keep me")
    (Path(sync.volume_dir(NB, 1)) / "b.txt").write_text("b")
    before = dict(store.objects)
    store.down_for(1)  # the first volume's first upload fails
    with pytest.raises(VolumeSyncError) as failure:
        await sync.push(NB, volumes)
    assert str(failure.value).startswith(
        "volume datasets@lab-s3/imagenet:/workspace/data push failed: "
    )
    # Nothing already in the bucket was lost; the failed volume's dir is kept, the other pushed.
    assert all(store.objects.get(k) == v for k, v in before.items())
    assert (Path(sync.volume_dir(NB, 0)) / "new.txt").exists()
    assert not Path(sync.volume_dir(NB, 1)).exists()
    assert body(store, "other/b.txt") == b"b"
    # Retried: succeeds, deletes what the user deleted, removes the dirs.
    await sync.push(NB, volumes)
    assert body(store, "imagenet/new.txt") == b"keep me"
    assert "imagenet/labels.csv" not in store.keys("datasets")
    assert not Path(sync.notebook_dir(NB)).exists()


async def test_a_name_that_cannot_be_a_key_fails_the_push_naming_it_and_keeps_the_file(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    await sync.pull(NB, [assigned("rw")])
    root = os.fsencode(sync.volume_dir(NB, 0))
    with open(root + b"/r\xe9sultats.csv", "wb") as f:
        f.write(b"1,2")
    with pytest.raises(VolumeSyncError) as failure:
        await sync.push(NB, [assigned("rw")])
    assert "is not UTF-8" in str(failure.value) and "r\\xe9sultats.csv" in str(failure.value)
    assert os.path.exists(root + b"/r\xe9sultats.csv")


async def test_pull_failure_names_the_volume_and_leaves_no_partial_dir(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    store.down_for(1)  # the listing fails
    with pytest.raises(VolumeSyncError, match=r"^volume datasets@lab-s3/imagenet:/x pull failed"):
        await sync.pull(NB, [assigned(mount_path="/x")])
    assert not Path(sync.volume_dir(NB, 0)).exists()
    assert not Path(sync.volume_dir(NB, 0) + ".pulling").exists()


async def test_failed_download_leaves_no_partial_dir(
    sync: VolumeSync, store: FakeObjectStore
) -> None:
    store.objects[("datasets", "imagenet/gone")] = (b"", {})
    original = store.get_file

    async def flaky(bucket: str, key: str, dest: str) -> dict[str, str]:
        if key.endswith("gone"):
            raise OSError("disk full")
        return await original(bucket, key, dest)

    store.get_file = flaky  # type: ignore[method-assign]
    with pytest.raises(VolumeSyncError, match="pull failed: disk full"):
        await sync.pull(NB, [assigned()])
    assert not Path(sync.notebook_dir(NB)).exists() or not os.listdir(sync.notebook_dir(NB))


async def test_an_existing_dir_is_used_as_is(sync: VolumeSync, store: FakeObjectStore) -> None:
    await sync.pull(NB, [assigned("rw")])
    (Path(sync.volume_dir(NB, 0)) / "unpushed.txt").write_text("mine")
    store.calls.clear()
    await sync.pull(NB, [assigned("rw")])
    assert store.calls == {}
    assert (Path(sync.volume_dir(NB, 0)) / "unpushed.txt").read_text() == "mine"


async def test_one_store_per_datastore_and_close(tmp_path: Path) -> None:
    made: list[wire.VolumeAssignment] = []

    def factory(a: wire.VolumeAssignment) -> FakeObjectStore:
        made.append(a)
        return FakeObjectStore()

    sync = VolumeSync(str(tmp_path / "v"), store_factory=factory)
    volumes = [
        assigned(mount_path="/a"),
        assigned(mount_path="/b", container="other"),
        assigned(mount_path="/c", endpoint="http://elsewhere"),
    ]
    await sync.pull(NB, volumes)
    assert [a.endpoint for a in made] == ["http://s3.test", "http://elsewhere"]
    await sync.close()
    await sync.remove(NB)
    assert not Path(sync.notebook_dir(NB)).exists()


# ---------------------------------------------------------------- wired into the reconciler


class Rig:
    def __init__(self, tmp_path: Path, store: FakeObjectStore) -> None:
        from agent.reconcile import Reconciler
        from agent.report import Outbox
        from agent.workspace.host import HostWorkspaces
        from common.config import AgentConfig
        from tests.fakes.inventory import FakeClock
        from tests.fakes.objectstore import FakeObjectStore as WorkspaceStore
        from tests.fakes.runtime import FakeRuntime
        from tests.fakes.scheduler import FakeContact, FakeSink

        config = AgentConfig(
            host_id="h1",
            workspaces_dir=str(tmp_path / "workspaces"),
            scratch_dir=str(tmp_path / "scratch"),
            volumes_dir=str(tmp_path / "volumes"),
            state_dir=str(tmp_path / "state"),
            start_timeout_s=60,
        )
        self.runtime = FakeRuntime()
        self.sink = FakeSink()
        self.outbox = Outbox(self.sink)
        self.clock = FakeClock()
        self.volumes = VolumeSync(config.volumes_dir, store_factory=lambda _: store)
        workspaces = HostWorkspaces(
            WorkspaceStore(), "ws", config.workspaces_dir, config.scratch_dir
        )
        self.reconciler = Reconciler(
            config,
            self.runtime,
            workspaces,
            self.outbox,
            volumes=self.volumes,
            contact=FakeContact(),
            clock=self.clock,
            probe=self.runtime.probe,
        )

    async def tick(self) -> None:
        await self.reconciler.tick()
        await self.reconciler.idle()
        await self.outbox.tick()

    def assign(self, volumes: list[wire.VolumeAssignment], **fields) -> None:
        item = wire.Assignment(
            notebook=NB,
            project="p1",
            generation=1,
            desired=fields.pop("desired", "running"),
            state=fields.pop("state", NotebookState.STARTING),
            image="tiny:ok",
            command=["editor"],
            editor_port=8888,
            url_path="/",
            gpus=[],
            cpu=1,
            memory_mb=512,
            env={},
            initialized=False,
            access_token="t",
            volumes=volumes,
        )
        self.reconciler.set_assignments([item])

    def reported(self) -> list[tuple[str, str]]:
        return [(t.state.value, t.reason) for t in self.sink.sent]


async def test_reconciler_pulls_before_start_mounts_and_pushes_after_stop(
    tmp_path: Path, store: FakeObjectStore
) -> None:
    rig = Rig(tmp_path, store)
    volumes = [assigned("rw"), assigned("ro", mount_path="/models", prefix="other")]
    rig.assign(volumes)
    progress: list[wire.Progress | None] = []
    set_progress = rig.outbox.set_progress
    rig.outbox.set_progress = lambda n, g, p: (progress.append(p), set_progress(n, g, p))
    await rig.tick()
    assert rig.reported() == [("RUNNING", "editor answers")]
    # Progress while pulling, cleared once done (latest wins at the scheduler).
    pulled = [p for p in progress if p and p.phase == "volumes-pull"]
    assert [p.detail for p in pulled if p.files_done == p.files_total][-1] == (
        "datasets@lab-s3/other:/models"
    )
    assert progress[-1] is None
    spec = rig.runtime.specs[NB]
    assert spec.extra_mounts == [
        (rig.volumes.volume_dir(NB, 0), "/workspace/data", False),
        (rig.volumes.volume_dir(NB, 1), "/models", True),
    ]
    assert (Path(rig.volumes.volume_dir(NB, 0)) / "labels.csv").exists()

    (Path(rig.volumes.volume_dir(NB, 0)) / "result.txt").write_text("42")
    rig.assign(volumes, desired="stopped", state=NotebookState.STOPPING)
    await rig.tick()
    assert rig.reported()[-1] == ("STOPPED", "stopped")
    assert body(store, "imagenet/result.txt") == b"42"
    assert not Path(rig.volumes.notebook_dir(NB)).exists()


async def test_reconciler_push_failure_is_failed_naming_the_volume(
    tmp_path: Path, store: FakeObjectStore
) -> None:
    rig = Rig(tmp_path, store)
    volumes = [assigned("rw")]
    rig.assign(volumes)
    await rig.tick()
    (Path(rig.volumes.volume_dir(NB, 0)) / "result.txt").write_text("42")
    store.down_for(1)
    rig.runtime.exit(NB, 0)
    await rig.tick()
    state, reason = rig.reported()[-1]
    assert state == "FAILED"
    assert reason.startswith(
        "volume datasets@lab-s3/imagenet:/workspace/data push failed: put_file: connection refused"
    )
    assert (Path(rig.volumes.volume_dir(NB, 0)) / "result.txt").exists()  # kept


async def test_reconciler_pull_failure_is_failed_before_any_container(
    tmp_path: Path, store: FakeObjectStore
) -> None:
    rig = Rig(tmp_path, store)
    store.down_for(1)
    rig.assign([assigned("ro", mount_path="/mnt/d")])
    await rig.tick()
    assert NB not in rig.runtime.specs
    state, reason = rig.reported()[-1]
    assert state == "FAILED"
    assert reason.startswith("volume datasets@lab-s3/imagenet:/mnt/d pull failed: list:")
